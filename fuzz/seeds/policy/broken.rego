# METADATA
# custom:
#   enforcement: sotf
package slipway

deny contains "x" if {
