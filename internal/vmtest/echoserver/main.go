// Command echoserver is a test service for the tiny guest: it listens on
// the address given as its argument and sends every connection's bytes
// back until that connection's end. It prints each client's address, so
// a test can tell where connections came from.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: echoserver ADDRESS:PORT")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "echoserver:", err)
		os.Exit(1)
	}
	fmt.Println("echoserver: listening on", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "echoserver:", err)
			os.Exit(1)
		}
		fmt.Println("echoserver: connection from", c.RemoteAddr())
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}
