"""Device profiles (Raspberry Pi Zero 2 W … Pi 5, Jetson, x86-64): data and their model.

Filled in by the models issue; the package exists so the layout and install are fixed now.
"""
