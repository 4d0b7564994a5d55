package slipway

deny contains "never" if {
    some i in numbers.range(1, 100000000)
    i < 0
}
