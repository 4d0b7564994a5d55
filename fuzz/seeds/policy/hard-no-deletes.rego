# METADATA
# title: Nothing is deleted in a protected environment
package slipway

deny contains {"msg": sprintf("%s would be deleted", [c.address]), "resource": c.address} if {
    input.env.protected
    some c in input.resource_changes
    "delete" in c.actions
}
