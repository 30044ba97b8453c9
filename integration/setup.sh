#!/usr/bin/env bash
# Installs and starts what the integration tests and the demo need, on Debian
# 12 as root: RabbitMQ, OpenSSH server and client, rsync, python3-glance
# (for the real-Glance end-to-end test), lintian and systemd (its
# systemd-analyze verifies `make deb`'s package and units) and time
# (/usr/bin/time -v measures peak memory in the broker-input test). Safe to
# run again: it installs only what is missing and starts RabbitMQ only if it
# does not answer.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "setup.sh: must run as root (mount namespaces, sshd, apt-get)" >&2
	exit 1
fi

packages=(rabbitmq-server openssh-server openssh-client rsync python3-glance lintian systemd time)
missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
		missing+=("$p")
	fi
done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "setup.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Package installs must not start services on their own: no init here,
	# and a stock sshd on :22 or glance-api on :9292 is not wanted.
	policy=/usr/sbin/policy-rc.d
	made_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		made_policy=1
		trap 'rm -f "$policy"' EXIT
	fi
	# Update the package lists only when apt cannot find a candidate.
	if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
		apt-get update
		apt-get install -y --no-install-recommends "${missing[@]}"
	fi
	if [ -n "$made_policy" ]; then rm -f "$policy"; fi
fi

# sshd's privilege-separation directory; /run is a tmpfs on most systems.
mkdir -p /run/sshd
chmod 755 /run/sshd

amqp_answers() { timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null; }

if ! amqp_answers; then
	if ! rabbitmqctl -q status >/dev/null 2>&1; then
		echo "setup.sh: starting RabbitMQ"
		rabbitmq-server -detached
	fi
	ok=
	for _ in $(seq 1 60); do
		if rabbitmqctl -q await_startup >/dev/null 2>&1; then
			ok=1
			break
		fi
		sleep 2
	done
	if [ -z "$ok" ]; then
		echo "setup.sh: RabbitMQ did not start; see /var/log/rabbitmq/" >&2
		exit 1
	fi
fi
for _ in $(seq 1 30); do
	amqp_answers && break
	sleep 1
done
if ! amqp_answers; then
	echo "setup.sh: nothing answers on 127.0.0.1:5672 (RabbitMQ)" >&2
	exit 1
fi
echo "setup.sh: RabbitMQ answers on 127.0.0.1:5672; sshd, rsync, python3-glance, lintian, systemd-analyze and time are installed"
