// Package glanceapi reads the image records Glance keeps, through the Images
// API v2: the whole list, or one image (its status confirms a delete event
// before sync-images removes anything). It is the other source of truth beside
// the notifications: an image uploaded before the tool was installed, or whose
// events were lost (oslo.messaging notifications are at-most-once), is still
// in this list.
//
// It owns authentication the OpenStack way (clouds.yaml / OS_CLOUD, else the
// OS_* variables) and the no-auth endpoint of a deployment without Keystone.
// It knows nothing of the datadir; a listing that could not be read whole is
// an error, never a shorter list, because a shorter list is what makes a file
// look orphaned.
package glanceapi
