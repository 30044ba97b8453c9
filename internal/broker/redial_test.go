package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Redial starts after the URL the lost connection was on and tries that
// one last, wrapping around the list: a killed cluster node is then tried
// only when the others fail.
func TestDialFromStartsAfterTheDeadURL(t *testing.T) {
	var urls []string
	tried := make(chan int, 16)
	for i := 0; i < 3; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				tried <- i
				c.Close() // no AMQP here: the dial fails, the next URL is tried
			}
		}()
		urls = append(urls, fmt.Sprintf("amqp://u:Secret99@%s/", ln.Addr()))
	}
	_, err := dialFrom(context.Background(), urls, 2, TLS{})
	if err == nil {
		t.Fatal("dial succeeded against listeners that speak no AMQP")
	}
	if strings.Contains(err.Error(), "Secret99") {
		t.Errorf("error shows the password: %v", err)
	}
	var order []int
	for len(order) < 3 {
		order = append(order, <-tried)
	}
	if fmt.Sprint(order) != "[2 0 1]" {
		t.Errorf("URLs tried in order %v, want [2 0 1]", order)
	}
}

func TestLost(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{fmt.Errorf("reading: %w", amqp.ErrClosed), true},
		{&amqp.Error{Code: amqp.FrameError, Reason: "EOF"}, true},
		{fmt.Errorf("x: %w", &amqp.Error{Code: amqp.ConnectionForced}), true},
		{fmt.Errorf("consumer: %w", ErrConnectionLost), true},
		{&amqp.Error{Code: amqp.AccessRefused}, false},
		{fmt.Errorf("publish: %w", ErrNacked), false},
		{errors.New("disk full"), false},
	} {
		if got := Lost(c.err); got != c.want {
			t.Errorf("Lost(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
