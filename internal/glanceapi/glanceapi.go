package glanceapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	osconfig "github.com/gophercloud/gophercloud/v2/openstack/config"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/pagination"
)

// Image is the part of an image record that decides what a node's datadir
// should hold.
type Image struct {
	ID       string
	Status   string // queued, saving, active, killed, deleted, pending_delete, deactivated, uploading, importing
	Size     int64
	Checksum string // hex MD5; "" until data is uploaded
	// HashAlgo and HashValue are Glance's multihash (os_hash_algo,
	// os_hash_value; sha512 unless hashing_algorithm says otherwise), present
	// for images uploaded since Rocky.
	HashAlgo, HashValue string
	// Stores are the ids of the stores holding the image, with
	// enabled_backends (multi-store); nil otherwise, and before data.
	// Glance sends them as one comma-joined string (openstack/glance:
	// glance/api/v2/images.py ResponseSerializer._format_image).
	Stores []string
}

// Client reads one Glance endpoint.
type Client struct {
	sc   *gophercloud.ServiceClient
	Base string // the endpoint, for messages
	// noAuth: no Keystone (NewNoAuth); see SeesAllProjects.
	noAuth bool
}

// pageSize is asked of Glance per page; Glance caps it at its api_limit_max
// (1000 by default) and the pager follows the next links either way.
const pageSize = 500

// requestTimeout bounds one HTTP request; a listing of many pages may take
// longer as a whole, under the caller's context.
const requestTimeout = 2 * time.Minute

// NewNoAuth talks to endpoint (e.g. http://glance:9292) without a token, for
// deployments without Keystone (paste flavor with unauthenticated-context).
func NewNoAuth(endpoint string) (*Client, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q: want an http:// or https:// URL of glance-api", endpoint)
	}
	base := gophercloud.NormalizeURL(strings.TrimSuffix(strings.TrimRight(endpoint, "/"), "/v2"))
	pc := &gophercloud.ProviderClient{HTTPClient: http.Client{Timeout: requestTimeout}}
	pc.EndpointLocator = func(gophercloud.EndpointOpts) (string, error) { return base, nil }
	sc, err := openstack.NewImageV2(pc, gophercloud.EndpointOpts{})
	if err != nil {
		return nil, err
	}
	return &Client{sc: sc, Base: base, noAuth: true}, nil
}

// NewFromEnv authenticates the way the openstack client does: the cloud
// named by OS_CLOUD in clouds.yaml (OS_CLIENT_CONFIG_FILE, ./, ~/.config/openstack/,
// /etc/openstack/), else the OS_* variables (OS_AUTH_URL, OS_USERNAME, ...).
// The image endpoint comes from the Keystone catalog (OS_REGION_NAME,
// OS_INTERFACE).
func NewFromEnv(ctx context.Context) (*Client, error) {
	if cloud := os.Getenv("OS_CLOUD"); cloud != "" {
		return NewFromCloud(ctx, cloud)
	}
	ao, err := openstack.AuthOptionsFromEnv()
	if err != nil {
		return nil, fmt.Errorf("no Glance to ask: give --endpoint URL, or set OS_CLOUD (clouds.yaml) or OS_AUTH_URL and the other OS_* variables: %w", err)
	}
	// A cron job runs for hours; let gophercloud log in again when the token expires.
	ao.AllowReauth = true
	eo := gophercloud.EndpointOpts{Region: os.Getenv("OS_REGION_NAME"), Availability: gophercloud.Availability(os.Getenv("OS_INTERFACE"))}
	pc, err := osconfig.NewProviderClient(ctx, ao, osconfig.WithHTTPClient(http.Client{Timeout: requestTimeout}))
	if err != nil {
		return nil, fmt.Errorf("keystone %s: %w", ao.IdentityEndpoint, err)
	}
	sc, err := openstack.NewImageV2(pc, eo)
	if err != nil {
		return nil, fmt.Errorf("image endpoint from the keystone catalog: %w", err)
	}
	return &Client{sc: sc, Base: sc.Endpoint}, nil
}

// NewFromCloud authenticates as the cloud named cloud in clouds.yaml
// (OS_CLIENT_CONFIG_FILE, ./, ~/.config/openstack/, /etc/openstack/), as
// OS_CLOUD=cloud would; the image endpoint comes from the Keystone catalog.
func NewFromCloud(ctx context.Context, cloud string) (*Client, error) {
	ao, eo, tlsConf, err := clouds.Parse(clouds.WithCloudName(cloud))
	if err != nil {
		return nil, fmt.Errorf("clouds.yaml (cloud %s): %w", cloud, err)
	}
	// A cron job runs for hours; let gophercloud log in again when the token expires.
	ao.AllowReauth = true
	pc, err := osconfig.NewProviderClient(ctx, ao, osconfig.WithTLSConfig(tlsConf), osconfig.WithHTTPClient(http.Client{Timeout: requestTimeout}))
	if err != nil {
		return nil, fmt.Errorf("keystone %s (cloud %s): %w", ao.IdentityEndpoint, cloud, err)
	}
	sc, err := openstack.NewImageV2(pc, eo)
	if err != nil {
		return nil, fmt.Errorf("image endpoint from the keystone catalog (cloud %s): %w", cloud, err)
	}
	return &Client{sc: sc, Base: sc.Endpoint}, nil
}

// List returns every image Glance shows this client, hidden ones included
// (os_hidden images are left out of a plain listing but are images all the
// same), following the pages to the end. Any failure, on any page, is an
// error: the caller must never mistake part of the list for all of it.
//
// With Keystone, the credentials must see every project's images (an admin):
// a member of one project sees only its own and public ones, and every other
// file would look orphaned. The caller's delete guards exist for that case.
func (c *Client) List(ctx context.Context) ([]Image, error) {
	seen := map[string]bool{}
	var out []Image
	for _, hidden := range []bool{false, true} {
		pages := 0
		err := images.List(c.sc, images.ListOpts{Limit: pageSize, Hidden: hidden}).EachPage(ctx, func(_ context.Context, p pagination.Page) (bool, error) {
			pages++
			list, err := images.ExtractImages(p)
			if err != nil {
				return false, err
			}
			for _, gi := range list {
				img, err := convert(gi)
				if err != nil {
					return false, err
				}
				if !seen[img.ID] {
					seen[img.ID] = true
					out = append(out, img)
				}
			}
			return true, nil
		})
		if err != nil {
			what := "images"
			if hidden {
				what = "hidden images"
			}
			return nil, fmt.Errorf("glance %s: listing %s (page %d): %w", c.Base, what, pages+1, err)
		}
	}
	return out, nil
}

// ErrNotFound is Glance's 404 for an image: deleted, never existed, or not
// visible to these credentials.
var ErrNotFound = errors.New("image not found in glance")

// Get reads one image record.
func (c *Client) Get(ctx context.Context, id string) (Image, error) {
	gi, err := images.Get(ctx, c.sc, id).Extract()
	if gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		return Image{}, fmt.Errorf("glance %s: image %s: %w", c.Base, id, ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("glance %s: image %s: %w", c.Base, id, err)
	}
	return convert(*gi)
}

// statusTimeout bounds one ImageStatus: a delete waits on it, and an answer
// that does not come is a delete left for a later run.
var statusTimeout = 30 * time.Second

// ImageStatus is Glance's status of image id (GET /v2/images/{id}), or found
// false when Glance answers 404: deleted, never existed, or not visible to
// these credentials. Any other failure, a 5xx or no answer within
// statusTimeout included, is an error: Glance could not be asked.
func (c *Client) ImageStatus(ctx context.Context, id string) (status string, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	img, err := c.Get(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	return img.Status, true, nil
}

func convert(gi images.Image) (Image, error) {
	if gi.ID == "" {
		return Image{}, errors.New("glance returned an image record without an id")
	}
	img := Image{ID: gi.ID, Status: string(gi.Status), Size: gi.SizeBytes, Checksum: gi.Checksum}
	// gophercloud leaves the keys it has no field for in Properties.
	img.HashAlgo, _ = gi.Properties["os_hash_algo"].(string)
	img.HashValue, _ = gi.Properties["os_hash_value"].(string)
	if joined, _ := gi.Properties["stores"].(string); joined != "" {
		for st := range strings.SplitSeq(joined, ",") {
			if st = strings.TrimSpace(st); st != "" {
				img.Stores = append(img.Stores, st)
			}
		}
	}
	return img, nil
}
