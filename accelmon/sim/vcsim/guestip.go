package main

import (
	"fmt"
	"regexp"
	"strings"
)

var guestIPPrefixRe = regexp.MustCompile(`^([0-9]{1,3})\.$`)

// rewriteGuestIPs moves the seeded guest IPs (10.x.y.z) to another first octet, e.g. "127."
// (-guest-ip-prefix): every address of 127.0.0.0/8 is loopback on Linux, so tests can run an
// agent on each GPU VM's own guest IP and exercise discovery end to end.
func (e *estate) rewriteGuestIPs(prefix string) error {
	if prefix == "" {
		return nil
	}
	m := guestIPPrefixRe.FindStringSubmatch(prefix)
	var octet int
	if m != nil {
		fmt.Sscanf(m[1], "%d", &octet)
	}
	if m == nil || octet < 1 || octet > 255 {
		return fmt.Errorf("invalid -guest-ip-prefix %q (want the first octet and a dot, e.g. \"127.\")", prefix)
	}
	for _, v := range e.VMs {
		if strings.HasPrefix(v.IP, "10.") {
			v.IP = prefix + strings.TrimPrefix(v.IP, "10.")
		}
	}
	return nil
}
