package slipway

deny[msg] {
    input.resource_changes[_].actions[_] == "delete"
    msg := "no deletes"
}
