package syncer

import (
	"strings"

	"github.com/glance-image-sync/glance-image-sync/internal/notification"
)

// Action is what one event asks of this node.
type Action int

const (
	Ignore Action = iota // ack and move on
	Fetch                // make sure the active image is here, verified
	Delete               // remove the image's file and any partial
	Park                 // can never succeed: move to the parking queue
)

func (a Action) String() string {
	return [...]string{"ignore", "fetch", "delete", "park"}[a]
}

// Plan decides what an event asks for, and why, from the event alone
// (shared/glance.md, "Events").
func Plan(ev *notification.Event) (Action, string) {
	if !ev.IsImageEvent() {
		return Ignore, "not an image event"
	}
	if ev.Image == nil {
		switch ev.EventType {
		case "image.update", "image.upload", "image.activate", "image.delete":
			return Park, "image event without an image payload"
		}
		return Ignore, "event carries no image"
	}
	img := ev.Image
	switch ev.EventType {
	case "image.delete":
		return Delete, "image deleted"
	case "image.upload":
		// image.upload is sent once the data is written and closed. Glance v1's
		// legacy notifier sends it with status still "saving" but with the final
		// size and checksum (openstack/glance:glance/api/v1/images.py), so it is
		// the size and checksum that say the data exists, not the status.
		switch img.Status {
		case "killed", "deleted", "pending_delete":
			return Ignore, "status " + img.Status
		}
		if img.Checksum == "" || img.Size < 0 {
			return Ignore, "upload without size or checksum"
		}
		return Fetch, "image uploaded"
	case "image.update", "image.activate":
		// image.update fires with status saving before any byte is written;
		// creating the file then would make a later upload to this node fail,
		// since glance_store refuses to overwrite (glance.md).
		if img.Status != "active" {
			return Ignore, "status " + orNone(img.Status)
		}
		if img.Checksum == "" || img.Size < 0 {
			return Ignore, "active without size or checksum (no data in the file store)"
		}
		return Fetch, "active image"
	}
	return Ignore, ev.EventType + " changes no file"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// ShortName is a host name up to its first dot, as the original tool compared
// them.
func ShortName(host string) string {
	short, _, _ := strings.Cut(host, ".")
	return short
}

// Sources orders the peers to try for an image: the publisher first when it is
// a configured node, then the others in api_nodes order, so an image whose
// publisher is down or lacks the file is found elsewhere. ok is false when the
// publisher names a host outside api_nodes: no connection is made on the word
// of a message. oslo's default publisher "image.localhost" names no node;
// every peer is a candidate then.
func Sources(publisher, self string, peers []string) (order []string, fromSelf, ok bool) {
	pub := ShortName(publisher)
	switch {
	case pub == self:
		fromSelf = true
	case pub == "" || pub == "localhost":
	default:
		known := false
		for _, p := range peers {
			if p == pub {
				known = true
			}
		}
		if !known {
			return nil, false, false
		}
		order = append(order, pub)
	}
	for _, p := range peers {
		if p != pub {
			order = append(order, p)
		}
	}
	return order, fromSelf, true
}
