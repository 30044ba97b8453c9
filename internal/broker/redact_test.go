package broker

import (
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// No form of a password survives Redact or scrub: the raw percent-encoded
// text, the decoded one, or either inside a URL Go cannot parse (a library's
// error then quotes the whole URL).
func TestRedactAndScrubHidePasswords(t *testing.T) {
	for _, raw := range []string{
		"amqp://user:p%40ssw0rd%21@h%7Bo%7Dst:5672/",
		"amqp://user:p%40ssw0rd%21@ho%zzst:5672/",
		"amqp://user:p%40ssw0rd%21@mq:5672/",
		"amqps://user:p%40ssw0rd%21@[fd00::1]:5671/%2Fvh",
	} {
		_, perr := amqp.ParseURI(raw)
		for _, msg := range []string{Redact(raw), scrub("dial "+raw+": failed", raw), scrub("pw p@ssw0rd! rejected", raw)} {
			for _, secret := range []string{"p%40ssw0rd", "p@ssw0rd", "ssw0rd"} {
				if strings.Contains(msg, secret) {
					t.Errorf("%q (from %s) shows %q", msg, raw, secret)
				}
			}
		}
		if perr != nil {
			if got := scrub(perr.Error(), raw); strings.Contains(got, "ssw0rd") {
				t.Errorf("amqp's parse error scrubbed to %q", got)
			}
		}
	}
}
