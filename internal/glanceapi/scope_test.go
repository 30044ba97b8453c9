package glanceapi

import (
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
)

func v3Result(roles ...string) tokens.CreateResult {
	var rs []any
	for _, r := range roles {
		rs = append(rs, map[string]any{"id": "id-" + r, "name": r})
	}
	var res tokens.CreateResult
	res.Body = map[string]any{"token": map[string]any{"roles": rs}}
	return res
}

// Only a token with the admin role (any case) sees every project; a member
// or reader does not, nor a token whose roles cannot be read.
func TestAdminToken(t *testing.T) {
	for _, tc := range []struct {
		roles []string
		want  bool
	}{
		{[]string{"member", "reader", "admin"}, true},
		{[]string{"Admin"}, true},
		{[]string{"member", "reader"}, false},
		{nil, false},
	} {
		got, why := adminToken(v3Result(tc.roles...))
		if got != tc.want || why == "" {
			t.Errorf("roles %v: %v (%s), want %v", tc.roles, got, why, tc.want)
		}
		if !got && len(tc.roles) > 0 && !strings.Contains(why, "member, reader") {
			t.Errorf("roles %v: reason %q does not name them", tc.roles, why)
		}
	}
	if got, _ := adminToken(nil); got {
		t.Error("no auth result taken as admin")
	}
}

// Without Keystone every request is admin in Glance.
func TestNoAuthSeesAll(t *testing.T) {
	c, err := NewNoAuth("http://127.0.0.1:9292")
	if err != nil {
		t.Fatal(err)
	}
	if ok, why := c.SeesAllProjects(); !ok {
		t.Errorf("no-auth client: %v (%s)", ok, why)
	}
}
