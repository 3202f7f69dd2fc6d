#!/bin/bash
# Runs a command under /usr/bin/time -v with its log at info, sampling its RSS once a second.
# usage: benches/rss_sample.sh NAME COMMAND ARGS...
#   writes /tmp/m_NAME.{out,log,time,rss}; then `python3 benches/rss_by_stage.py NAME`
#   gives the peak RSS while each nightly stage ran.
name=$1; shift
RUST_LOG=info /usr/bin/time -v -o /tmp/m_$name.time "$@" > /tmp/m_$name.out 2> /tmp/m_$name.log &
timer=$!
sleep 1
pid=$(pgrep -P $timer | head -1)
: > /tmp/m_$name.rss
while kill -0 "$pid" 2>/dev/null; do
  echo "$(date +%s) $(awk '/VmRSS/{print $2}' /proc/$pid/status 2>/dev/null)" >> /tmp/m_$name.rss
  sleep 1
done
wait $timer
echo "exit $?"
grep -E "Elapsed|Maximum resident" /tmp/m_$name.time
