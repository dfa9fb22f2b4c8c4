#!/usr/bin/env bash
# Builds portcullis and runs a small tool under the strict profile: it may read
# and write its workspace, and nothing else. Each line shows what the kernel
# answered. Exits non-zero if any answer is not the expected one.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p portcullis
# .cargo/config.toml names the target (a static build), hence the triple.
P="$PWD/target/x86_64-unknown-linux-gnu/release/portcullis"

ws=$(mktemp -d /tmp/portcullis-demo.XXXXXX)
trap 'rm -rf "$ws"' EXIT
echo "hello from the workspace" > "$ws/notes.txt"
cd "$ws"

# The tool: a shell script that tries what a prompt-injected MCP server would.
cat > tool.sh <<'SH'
try() { if out=$(eval "$2" 2>&1); then echo "  allowed  $1"; else echo "  DENIED   $1: ${out##*: }"; fi; }
try "read the workspace"                 'cat notes.txt'
try "write the workspace"                'echo ok > out.txt'
try "read /etc/shadow"                   'cat /etc/shadow'
try "list your home directory"           'ls "$HOME"'
try "append to ~/.bashrc"                'echo evil >> "$HOME/.bashrc"'
try "run a program not on the allowlist" 'id'
try "reach the network"                  'exec 3<>/dev/tcp/127.0.0.1/22'
SH

echo "portcullis run --profile strict --exec /bin/bash --exec /bin/cat --exec /bin/ls -- bash tool.sh"
out=$("$P" run --profile strict --exec /bin/bash --exec /bin/cat --exec /bin/ls -- /bin/bash tool.sh)
echo "$out"

expect() { grep -q -- "$1" <<<"$out" || { echo "demo: expected '$1'" >&2; exit 1; }; }
expect "allowed  read the workspace"
expect "allowed  write the workspace"
expect "DENIED   read /etc/shadow"
expect "DENIED   list your home directory"
expect "DENIED   append to ~/.bashrc"
expect "DENIED   run a program not on the allowlist"
expect "DENIED   reach the network"
echo
echo "What the kernel was told: $P explain --exec /bin/bash --exec /bin/cat --exec /bin/ls"
echo "demo: ok"
