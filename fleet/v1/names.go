package v1

import "fmt"

// MaxNameLength bounds object names; Orchard's future rule is 63 for VMs,
// and every name here must also fit in a local VM name and a URL path.
const MaxNameLength = 63

// ValidateName checks an object name: 1 to 63 characters from
// [A-Za-z0-9:_.-], the characters Orchard accepts, not starting with a dot
// or a dash.
func ValidateName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%s name is empty", kind)
	}
	if len(name) > MaxNameLength {
		return fmt.Errorf("%s name %q is longer than %d characters", kind, name, MaxNameLength)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			r == ':' || r == '_' || r == '.' || r == '-'
		if !ok {
			return fmt.Errorf("%s name %q contains restricted characters: use only A-Z, a-z, 0-9, ':', '_', '.' and '-'", kind, name)
		}
		if i == 0 && (r == '.' || r == '-') {
			return fmt.Errorf("%s name %q must not start with %q", kind, name, r)
		}
	}
	return nil
}
