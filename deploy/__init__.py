"""Release bundles, signing, deploy over SSH and MQTT, rollouts, images.

Not built yet; the package exists so the layout and install are fixed now.
"""
