package spec

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// A connect template refers to values known only when an instance starts:
//
//	${ports.SERVICE.NAME}  the host port forwarded to that service's port
//	                       (NAME is the port's name, or its guest port
//	                       number when it has none)
//	${instance}            the instance's name
//
// Anything else is literal; "$$" is a literal "$".
var (
	connectKeyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	connectRefRe = regexp.MustCompile(`\$\$|\$\{([^}]*)\}`)
)

// ConnectValues are what the templates refer to.
type ConnectValues struct {
	Instance string
	// Ports maps "SERVICE.NAME" to the host port.
	Ports map[string]int
}

// ExpandConnect renders one template with v. A reference v cannot answer
// (a port not forwarded) is an error naming it.
func ExpandConnect(tmpl string, v ConnectValues) (string, error) {
	var errs []string
	out := connectRefRe.ReplaceAllStringFunc(tmpl, func(m string) string {
		if m == "$$" {
			return "$"
		}
		ref := m[2 : len(m)-1]
		if ref == "instance" {
			return v.Instance
		}
		if key, ok := strings.CutPrefix(ref, "ports."); ok {
			if p, ok := v.Ports[key]; ok {
				return strconv.Itoa(p)
			}
		}
		errs = append(errs, fmt.Sprintf("${%s} has no value", ref))
		return m
	})
	if len(errs) > 0 {
		return "", fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return out, nil
}

// checkConnect validates the connect templates against the stack's
// services and their ports.
func (s *Stack) checkConnect(c *checker) {
	for _, key := range sortedKeys(s.Connect) {
		field := "connect." + key
		if !connectKeyRe.MatchString(key) {
			c.addf(field, "%q is not a variable name (letters, digits and _, not starting with a digit)", key)
		}
		tmpl := s.Connect[key]
		if rest := connectRefRe.ReplaceAllString(tmpl, ""); strings.Contains(rest, "${") {
			c.addf(field, "unclosed ${ in %q", tmpl)
		}
		for _, m := range connectRefRe.FindAllStringSubmatch(tmpl, -1) {
			if m[0] == "$$" {
				continue
			}
			s.checkConnectRef(c, field, m[1])
		}
	}
}

func (s *Stack) checkConnectRef(c *checker, field, ref string) {
	if ref == "instance" {
		return
	}
	key, ok := strings.CutPrefix(ref, "ports.")
	svcName, portName, ok2 := strings.Cut(key, ".")
	if !ok || !ok2 || svcName == "" || portName == "" {
		c.addf(field, "unknown reference ${%s}: want ${ports.SERVICE.NAME} or ${instance}", ref)
		return
	}
	svc, ok := s.Services[svcName]
	if !ok {
		c.addf(field, "${%s}: unknown service %q (services: %s)", ref, svcName, strings.Join(s.ServiceNames(), ", "))
		return
	}
	var names []string
	for _, p := range svc.Ports {
		names = append(names, PortName(p))
	}
	if !slices.Contains(names, portName) {
		if len(names) == 0 {
			c.addf(field, "${%s}: service %s forwards no port (add ports: to it)", ref, svcName)
			return
		}
		c.addf(field, "${%s}: service %s has no port %q (it has: %s)", ref, svcName, portName, strings.Join(names, ", "))
	}
}

// PortName is how a port is named in overrides and templates: its name, or
// its guest port number when it has none.
func PortName(p Port) string {
	if p.Name != "" {
		return p.Name
	}
	return strconv.Itoa(p.Guest)
}
