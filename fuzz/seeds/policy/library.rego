package lib.sizes

big(n) if { n > 10 }
