#!/usr/bin/python3
"""The MQTT clients of tests/brokers.rs, on the real paho-mqtt library (Debian's
python3-paho-mqtt 1.6).

MQTT has no failover URI, so the failover list is application code here, as it would be in a
real application: connect to the first address; on any failure (refused, reset, no CONNACK,
connection lost) move to the next address after a short reconnect delay, and go on.

    mqtt_client.py pub PORT,PORT [--interval-ms N] [--wait-bridge NAME]
    mqtt_client.py sub PORT,PORT [--provision]

pub: QoS 1, message i carries payload(i); one message in flight at a time; a message is
"acked" once its PUBACK arrives; a message not acked on one connection is published again on
the next (at least once). sub: persistent session (clean_session False, fixed client id),
subscribed at QoS 1; --provision creates the session and subscription on whichever node serves
now, then disconnects cleanly (the session stays on that broker).

Every event is one line on stdout, flushed, for the test to read:
    connected PORT SESSION_PRESENT | refused PORT WHY | lost PORT WHY | bridge up
    ack ID PORT | msg ID PORT | corrupt PORT PAYLOAD | provisioned PORT SESSION_PRESENT | done
Any line on stdin (or its end) stops the client: pub finishes the message it is sending.
"""

import sys
import threading
import time
import zlib

import paho.mqtt.client as mqtt

TOPIC = "lockgate/e2e"
SUB_ID = "lockgate-e2e-sub"
PUB_ID = "lockgate-e2e-pub"
RECONNECT_DELAY = 0.05
# Bounds on single steps; the test bounds the whole run.
CONNACK_BOUND = 5.0
PUBACK_BOUND = 5.0

stop = threading.Event()


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def payload(i):
    """Message i's payload: its id and a checksum of it, so a subscriber can check the bytes."""
    return ("%d:%08x" % (i, zlib.crc32(str(i).encode()))).encode()


def parse(data):
    """The id of a well-formed payload, else None."""
    try:
        text = data.decode()
        i = int(text.split(":", 1)[0])
    except (UnicodeDecodeError, ValueError):
        return None
    return i if payload(i) == data else None


def watch_stdin():
    sys.stdin.readline()
    stop.set()


class Conn:
    """One MQTT connection to 127.0.0.1:port, driven by loop() on this thread."""

    def __init__(self, port, client_id, clean):
        self.port = port
        self.connected = False
        self.session_present = False
        self.lost = None
        self.subacked = set()
        self.on_message = None
        c = mqtt.Client(client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = lambda _c, _u, mid, _q: self.subacked.add(mid)
        c.on_message = lambda _c, _u, m: self.on_message and self.on_message(m)
        self.client = c

    def _on_connect(self, _c, _u, flags, rc):
        if rc == 0:
            self.connected = True
            self.session_present = bool(flags.get("session present"))
        else:
            self.lost = "connack rc=%d" % rc

    def _on_disconnect(self, _c, _u, rc):
        self.lost = self.lost or "disconnected rc=%d" % rc

    def step(self, timeout=0.02):
        """One turn of the network loop (waiting up to timeout for traffic); False once the
        connection is gone."""
        rc = self.client.loop(timeout=timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self.lost = self.lost or "loop rc=%d" % rc
        return self.lost is None

    def open(self):
        """Connects and waits for CONNACK; False (and a line) on any failure."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except OSError as e:
            say("refused %d %s" % (self.port, type(e).__name__))
            return False
        deadline = time.monotonic() + CONNACK_BOUND
        while not self.connected:
            if not self.step() or time.monotonic() > deadline:
                say("refused %d %s" % (self.port, self.lost or "no connack"))
                self.close()
                return False
        say("connected %d %d" % (self.port, self.session_present))
        return True

    def subscribe(self, topic):
        """Subscribes at QoS 1 and waits for SUBACK."""
        rc, mid = self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + CONNACK_BOUND
        while rc == mqtt.MQTT_ERR_SUCCESS and mid not in self.subacked:
            if not self.step() or time.monotonic() > deadline:
                return False
        return rc == mqtt.MQTT_ERR_SUCCESS

    def close(self):
        try:
            self.client.disconnect()
            self.client.loop(timeout=0.01)
        except OSError:
            pass
        try:
            self.client.socket() and self.client.socket().close()
        except OSError:
            pass


class Failover:
    """The failover list: cycles through the ports until a connection is established."""

    def __init__(self, ports, client_id, clean):
        self.ports = ports
        self.index = 0
        self.client_id = client_id
        self.clean = clean
        self.conn = None

    def turns(self):
        """Yields (conn, new) until stopped: the open connection, or (new=True) a fresh one
        after `lost`; ends when no node takes a connection."""
        while not stop.is_set():
            new = self.conn is None
            if new:
                self.conn = self.connect()
                if self.conn is None:
                    return
            yield self.conn, new

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def connect(self):
        while not stop.is_set():
            conn = Conn(self.ports[self.index], self.client_id, self.clean)
            if conn.open():
                return conn
            self.index = (self.index + 1) % len(self.ports)
            time.sleep(RECONNECT_DELAY)
        return None

    def lost(self, conn):
        say("lost %d %s" % (conn.port, conn.lost or "timeout"))
        conn.close()
        self.conn = None
        self.index = (self.index + 1) % len(self.ports)
        time.sleep(RECONNECT_DELAY)


def publisher(ports, interval, wait_bridge):
    fo = Failover(ports, PUB_ID, clean=True)
    i = 1
    for conn, new in fo.turns():
        if new and wait_bridge:
            # The broker's own bridge notification: retained "1" while the bridge is up.
            up = threading.Event()
            conn.on_message = lambda m: m.payload == b"1" and up.set()
            if not conn.subscribe("$SYS/broker/connection/%s/state" % wait_bridge):
                fo.lost(conn)
                continue
            while not up.is_set() and not stop.is_set() and conn.step():
                pass
            if not up.is_set():
                fo.lost(conn)
                continue
            conn.on_message = None
            say("bridge up")
            wait_bridge = None
        info = conn.client.publish(TOPIC, payload(i), qos=1)
        deadline = time.monotonic() + PUBACK_BOUND
        ok = info.rc == mqtt.MQTT_ERR_SUCCESS
        while ok and not info.is_published():
            ok = conn.step() and time.monotonic() < deadline
        if not ok:
            # Not acknowledged: send it again through the next node.
            fo.lost(conn)
            continue
        say("ack %d %d" % (i, conn.port))
        i += 1
        # Pace the publisher; keep the network loop turning meanwhile.
        until = time.monotonic() + interval
        while conn.step(max(0.0, until - time.monotonic())) and time.monotonic() < until:
            pass
        if conn.lost:
            fo.lost(conn)
    fo.close()
    say("done")


def subscriber(ports, provision):
    fo = Failover(ports, SUB_ID, clean=False)
    for conn, new in fo.turns():
        if new:
            port = conn.port

            def on_message(m, port=port):
                i = parse(m.payload)
                if i is None:
                    say("corrupt %d %r" % (port, m.payload))
                else:
                    say("msg %d %d" % (i, port))

            conn.on_message = on_message
            if provision or not conn.session_present:
                if not conn.subscribe(TOPIC):
                    fo.lost(conn)
                    continue
            if provision:
                say("provisioned %d %d" % (conn.port, conn.session_present))
                break
        if not conn.step():
            fo.lost(conn)
    fo.close()
    say("done")


def main():
    role, ports = sys.argv[1], [int(p) for p in sys.argv[2].split(",")]
    args = sys.argv[3:]
    threading.Thread(target=watch_stdin, daemon=True).start()
    if role == "pub":
        interval = 0.005
        wait_bridge = None
        if "--interval-ms" in args:
            interval = int(args[args.index("--interval-ms") + 1]) / 1000.0
        if "--wait-bridge" in args:
            wait_bridge = args[args.index("--wait-bridge") + 1]
        publisher(ports, interval, wait_bridge)
    elif role == "sub":
        subscriber(ports, "--provision" in args)
    else:
        sys.exit("usage: mqtt_client.py pub|sub PORT,PORT [options]")


if __name__ == "__main__":
    main()
