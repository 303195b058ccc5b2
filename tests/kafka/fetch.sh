#!/usr/bin/env bash
# Download the runtime jars of an Apache Kafka broker (see tests/kafka/pom.xml) into
# ${KAFKA_JARS_DIR:-.cache/kafka-jars}. Idempotent: does nothing when the stamp file
# records the sha256 of the current pom. Needs mvn + Maven Central.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
pom="$here/pom.xml"
out="${KAFKA_JARS_DIR:-$root/.cache/kafka-jars}"
stamp="$out/.stamp"

pom_sum="$(sha256sum "$pom" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$pom_sum" ]]; then
    exit 0
fi

command -v mvn >/dev/null 2>&1 || { echo "fetch.sh: mvn not found on PATH" >&2; exit 1; }

# Download into a sibling temp dir, then swap it in, so an interrupted run never
# leaves a half-filled jars dir that looks usable.
mkdir -p "$(dirname "$out")"
tmp="$(mktemp -d "${out%/}.tmp.XXXXXX")"
log="$tmp.log"
trap 'rm -rf "$tmp" "$log"' EXIT
# mvn -q still prints stray ANSI codes; keep its output and show it only on failure.
if ! mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$log" 2>&1; then
    cat "$log" >&2
    echo "fetch.sh: mvn failed (needs Maven Central); see output above" >&2
    exit 1
fi
rm -f "$log"
echo "$pom_sum" > "$tmp/.stamp"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "fetch.sh: Kafka jars in $out ($(ls "$out"/*.jar | wc -l) jars)" >&2
