"""Skills for the smart-home example fleet: a lamp, a thermostat, a doorbell and an echo."""
