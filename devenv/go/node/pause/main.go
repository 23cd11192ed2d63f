// Command pause holds a pod's namespaces open for the real test node: containerd's CRI
// plugin starts it as each pod's sandbox container. It does nothing but wait; as PID 1 of a
// shared PID namespace it also reaps orphaned children, and it exits on SIGINT or SIGTERM.
// Written for Modelseal's test node so that no image has to come from registry.k8s.io.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("modelseal-pause 1")
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not PID 1")
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child without blocking, so no zombie outlives its parent.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
