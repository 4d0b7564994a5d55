# METADATA
# title: previews need a label
# custom: { enforcement: soft }
package slipway

deny contains "needs the label preview" if {
    not "preview" in input.git.labels
}

warn contains "two processes" if { input.sizes.processes > 1 }
