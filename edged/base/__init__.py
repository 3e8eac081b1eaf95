"""The base floor: mechanisms every other part of edged builds on; imports nothing above."""
