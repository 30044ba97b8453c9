package glanceapi

import (
	"fmt"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
)

// SeesAllProjects says whether Glance shows this client every project's
// images, and what that was judged by. Glance shows other projects' private
// images only to an admin context: without Keystone every request is one
// (openstack/glance: glance/api/middleware/context.py
// UnauthenticatedContextMiddleware sets is_admin), with Keystone a token
// holding the admin role is (glance/policies/base.py context_is_admin =
// role:admin; before that, [DEFAULT] admin_role = admin, compared in lower
// case). A deployment whose policy names another role is told so, not
// trusted blindly.
func (c *Client) SeesAllProjects() (bool, string) {
	if c.noAuth {
		return true, "no Keystone (--endpoint): glance-api's unauthenticated context is admin"
	}
	return adminToken(c.sc.ProviderClient.GetAuthResult())
}

func adminToken(r gophercloud.AuthResult) (bool, string) {
	withRoles, ok := r.(interface{ ExtractRoles() ([]tokens.Role, error) })
	if !ok {
		return false, "the token's roles cannot be read (only a Keystone v3 token names them)"
	}
	roles, err := withRoles.ExtractRoles()
	if err != nil {
		return false, fmt.Sprintf("the token's roles cannot be read: %v", err)
	}
	var names []string
	for _, role := range roles {
		if strings.EqualFold(strings.TrimSpace(role.Name), "admin") {
			return true, "the token has the admin role"
		}
		names = append(names, role.Name)
	}
	if len(names) == 0 {
		return false, "the token has no role, so not admin (Glance's context_is_admin is role:admin by default)"
	}
	return false, fmt.Sprintf("the token's roles are %s, without admin (Glance's context_is_admin is role:admin by default)", strings.Join(names, ", "))
}
