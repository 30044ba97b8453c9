package syncer

import (
	"fmt"
	"strings"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
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

// Plan decides what an event asks for, and why, from the event and api_nodes
// (short names, this node included) alone (shared/glance.md, "Events"). A
// removal is planned only for a delete that a configured node, or oslo's
// default publisher, could have sent and whose payload agrees with itself:
// whoever can publish to Glance's exchange is a large group, and one message
// must never cost an image.
func Plan(ev *notification.Event, nodes []node.Name) (Action, string) {
	a, why, _ := plan(ev, nodes)
	return a, why
}

// Causes of parked events, for metrics.
const (
	causeInvalid   = "invalid_event"
	causePublisher = "unknown_publisher"
)

// plan is Plan with, for Park, the cause to count it under.
func plan(ev *notification.Event, nodes []node.Name) (a Action, why, cause string) {
	if !ev.IsImageEvent() {
		return Ignore, "not an image event", ""
	}
	if ev.Image == nil {
		switch ev.EventType {
		case "image.update", "image.upload", "image.activate", "image.delete":
			return Park, "image event without an image payload", causeInvalid
		}
		return Ignore, "event carries no image", ""
	}
	img := ev.Image
	switch ev.EventType {
	case "image.delete":
		if live(img.Status) && !img.Deleted {
			// Glance sets deleted = true on every image.delete it sends
			// (openstack/glance:glance/notifier.py ImageRepoProxy.remove).
			return Park, fmt.Sprintf("image.delete whose payload says status %s, deleted false", img.Status), causeInvalid
		}
		return authorizeDelete(ev, nodes, "image deleted")
	case "image.upload":
		// image.upload is sent once the data is written and closed. Glance v1's
		// legacy notifier sends it with status still "saving" but with the final
		// size and checksum (openstack/glance:glance/api/v1/images.py), so it is
		// the size and checksum that say the data exists, not the status.
		switch img.Status {
		case "killed", "deleted", "pending_delete":
			return Ignore, "status " + img.Status, ""
		}
		if img.Checksum == "" || img.Size < 0 {
			return Ignore, "upload without size or checksum", ""
		}
		return Fetch, "image uploaded", ""
	case "image.update", "image.activate":
		if ev.EventType == "image.update" && (img.Deleted || img.Status == "deleted" || img.Status == "pending_delete") {
			return authorizeDelete(ev, nodes, "update says the image is deleted (status "+orNone(img.Status)+")")
		}
		// image.update fires with status saving before any byte is written;
		// creating the file then would make a later upload to this node fail,
		// since glance_store refuses to overwrite (glance.md).
		if img.Status != "active" {
			return Ignore, "status " + orNone(img.Status), ""
		}
		if img.Checksum == "" || img.Size < 0 {
			return Ignore, "active without size or checksum (no data in the file store)", ""
		}
		return Fetch, "active image", ""
	}
	return Ignore, ev.EventType + " changes no file", ""
}

// live says whether an image in this status still has, or is about to have,
// its data: a delete that says so contradicts itself.
func live(status string) bool {
	switch status {
	case "active", "queued", "saving", "uploading", "importing", "deactivated":
		return true
	}
	return false
}

// authorizeDelete returns Delete when the event's publisher may delete: one
// of nodes, or oslo's default "image.localhost", which every node sends
// unless default_publisher_id is set. Anything else is parked, naming it.
func authorizeDelete(ev *notification.Event, nodes []node.Name, why string) (Action, string, string) {
	pub := node.Name(ev.Publisher)
	switch {
	case pub == "":
		return Park, "delete without a publisher_id", causePublisher
	case pub.Is(oslosDefault):
		return Delete, why, ""
	case node.Index(nodes, pub) >= 0:
		return Delete, why, ""
	}
	return Park, fmt.Sprintf("delete from publisher %q, which is not one of api_nodes (%s) nor oslo's default image.localhost",
		ev.PublisherID, joinNames(nodes)), causePublisher
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// oslosDefault is the host of oslo's default publisher_id, image.localhost,
// which every node sends unless default_publisher_id is set: it names no node.
const oslosDefault node.Name = "localhost"

func joinNames(ns []node.Name) string {
	ss := make([]string, len(ns))
	for i, n := range ns {
		ss[i] = string(n)
	}
	return strings.Join(ss, ", ")
}

// Sources orders the peers to try for an image: the publisher first when it is
// a configured node, then the others in api_nodes order, so an image whose
// publisher is down or lacks the file is found elsewhere. Names returned are
// as spelled in peers. ok is false when the publisher names a host outside
// api_nodes: no connection is made on the word of a message. oslo's default
// publisher "image.localhost" names no node; every peer is a candidate then.
func Sources(publisher, self node.Name, peers []node.Name) (order []node.Name, fromSelf, ok bool) {
	switch {
	case publisher.Is(self):
		fromSelf = true
	case publisher == "" || publisher.Is(oslosDefault):
	default:
		i := node.Index(peers, publisher)
		if i < 0 {
			return nil, false, false
		}
		order = append(order, peers[i])
	}
	for _, p := range peers {
		if !p.Is(publisher) {
			order = append(order, p)
		}
	}
	return order, fromSelf, true
}
