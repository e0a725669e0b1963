module mnm

go 1.26.0

require github.com/beevik/ntp v1.6.0

require (
	golang.org/x/net v0.59.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
)
