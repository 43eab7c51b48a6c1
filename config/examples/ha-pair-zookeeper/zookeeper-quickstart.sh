#!/usr/bin/env bash
# A three-server ZooKeeper ensemble on this host, from Debian's `zookeeper` package, for the
# ha-pair-zookeeper example (its connect-string: 127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183).
# For trying the example, not for production: three servers on one host survive the loss of a
# server process, not of the host.
#
#   apt-get install -y --no-install-recommends zookeeper libslf4j-java
#   config/examples/ha-pair-zookeeper/zookeeper-quickstart.sh start   # ready in a few seconds
#   config/examples/ha-pair-zookeeper/zookeeper-quickstart.sh status  # mode of each server
#   config/examples/ha-pair-zookeeper/zookeeper-quickstart.sh stop
#
# State, logs and PIDs live in $LOCKGATE_ZK_DIR (default /tmp/lockgate-zookeeper). Ports, all on
# 127.0.0.1: clients 2181-2183, quorum 2888-2890, election 3888-3890 (lists of three in
# LOCKGATE_ZK_CLIENT_PORTS, LOCKGATE_ZK_QUORUM_PORTS, LOCKGATE_ZK_ELECTION_PORTS override them;
# then change the example's connect-string to match).
# tickTime=2000 (LOCKGATE_ZK_TICK_MS), so a server grants sessions up to 20 ticks = 40 s
# (maxSessionTimeout): the example's session-ms = 18000 is granted as asked. With
# LOCKGATE_ZK_TICK_MS=500 the ceiling is 10 s, a session asked for 18 s is cut to 10 s, and
# `lockgate check` says so with the figures that result.
set -euo pipefail

DIR=${LOCKGATE_ZK_DIR:-/tmp/lockgate-zookeeper}
CP=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar
MAIN=org.apache.zookeeper.server.quorum.QuorumPeerMain
read -r -a CLIENT <<< "${LOCKGATE_ZK_CLIENT_PORTS:-2181 2182 2183}"
read -r -a QUORUM <<< "${LOCKGATE_ZK_QUORUM_PORTS:-2888 2889 2890}"
read -r -a ELECTION <<< "${LOCKGATE_ZK_ELECTION_PORTS:-3888 3889 3890}"
[ ${#CLIENT[@]} -eq 3 ] && [ ${#QUORUM[@]} -eq 3 ] && [ ${#ELECTION[@]} -eq 3 ] || {
  echo "each LOCKGATE_ZK_*_PORTS list needs three ports" >&2; exit 2; }
port() { echo "${CLIENT[$(($1 - 1))]}"; }
CONNECT="127.0.0.1:${CLIENT[0]},127.0.0.1:${CLIENT[1]},127.0.0.1:${CLIENT[2]}"

ruok() { # port -> "imok" when the server answers
  exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
  printf ruok >&3
  local answer
  answer=$(timeout 2 cat <&3 || true)
  exec 3<&- 3>&-
  [ "$answer" = imok ]
}

mode() { # port -> leader, follower, or nothing
  exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 0
  printf srvr >&3
  timeout 2 cat <&3 | sed -n 's/^Mode: //p' || true
  exec 3<&- 3>&-
}

start() {
  for jar in ${CP//:/ }; do
    [ -e "$jar" ] || { echo "missing $jar: apt-get install -y --no-install-recommends zookeeper libslf4j-java" >&2; exit 1; }
  done
  command -v java >/dev/null || { echo "java is missing (Debian's zookeeper package pulls one in)" >&2; exit 1; }
  for i in 1 2 3; do
    local d="$DIR/zk$i"
    if [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then
      echo "zk$i already running (pid $(cat "$d/pid"))"
      continue
    fi
    mkdir -p "$d/data"
    echo "$i" > "$d/data/myid"
    cat > "$d/zoo.cfg" <<CFG
tickTime=${LOCKGATE_ZK_TICK_MS:-2000}
initLimit=10
syncLimit=5
dataDir=$d/data
clientPort=$(port "$i")
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat
server.1=127.0.0.1:${QUORUM[0]}:${ELECTION[0]}
server.2=127.0.0.1:${QUORUM[1]}:${ELECTION[1]}
server.3=127.0.0.1:${QUORUM[2]}:${ELECTION[2]}
CFG
    setsid java -Xmx256m -XX:+UseSerialGC -cp "$CP" "$MAIN" "$d/zoo.cfg" \
      >"$d/server.log" 2>&1 </dev/null &
    echo $! > "$d/pid"
    echo "zk$i started (pid $!, client port $(port "$i"), log $d/server.log)"
  done
  # Ready when every server answers and one of them leads (bounded: 60 s).
  for _ in $(seq 120); do
    local ok=0 leader=0
    for i in 1 2 3; do
      ruok "$(port "$i")" && ok=$((ok + 1))
      [ "$(mode "$(port "$i")")" = leader ] && leader=1
    done
    if [ "$ok" -eq 3 ] && [ "$leader" -eq 1 ]; then
      echo "ensemble ready: $CONNECT"
      return 0
    fi
    sleep 0.5
  done
  echo "the ensemble did not become ready within 60 s; see $DIR/zk*/server.log" >&2
  exit 1
}

stop() {
  for i in 1 2 3; do
    local p="$DIR/zk$i/pid"
    if [ -f "$p" ]; then
      local pid
      pid=$(cat "$p")
      if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        # Bounded wait for it to exit.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "zk$i stopped"
      fi
      rm -f "$p"
    fi
  done
}

status() {
  for i in 1 2 3; do
    local m
    m=$(mode "$(port "$i")")
    echo "zk$i 127.0.0.1:$(port "$i"): ${m:-not answering}"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
