#!/usr/bin/env bash
# Regenerates the default English system prompts in en/ (checked in, so a
# build needs neither tool): espeak-ng speaks them, sox makes them 8 kHz
# mono 16-bit PCM, the format the media engine plays.
#   apt-get install -y espeak-ng sox && bash pbx-node/prompts/generate.sh
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

speak() { # name text
  espeak-ng -v en-us -s 150 -w "$tmp/$1.wav" "$2"
  sox "$tmp/$1.wav" -r 8000 -c 1 -b 16 -e signed-integer "en/$1.wav" norm -3
}

speak echo_test "You are in the echo test. After the tone, speak, and you will hear yourself."
speak conference_join "A caller has joined the conference."
speak conference_leave "A caller has left the conference."
speak conference_welcome "Welcome to the conference."
# A short beep after a prompt.
sox -n -r 8000 -c 1 -b 16 -e signed-integer en/beep.wav synth 0.25 sine 1000 vol 0.5
# Music on hold: four plucked arpeggios (C, Am, F, G), 6.4 s, loopable.
notes=()
i=0
for note in C4 E4 G4 C5 A3 C4 E4 A4 F3 A3 C4 F4 G3 B3 D4 G4; do
  sox -n -r 8000 -c 1 -b 16 -e signed-integer "$tmp/n$i.wav" synth 0.4 pluck "$note"
  notes+=("$tmp/n$i.wav")
  i=$((i + 1))
done
sox "${notes[@]}" en/music_on_hold.wav vol 0.4
sha256sum en/*.wav > SHA256SUMS
