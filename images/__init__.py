"""Device images: build a customised or complete Raspberry Pi image, and flash one safely.

``flash`` holds the pure decisions of ``edgeagent image flash`` (is this target safe? which disk
is the system on?), ``flash_sys`` reads what they need from ``/sys`` and ``/proc``,
``flash_io`` writes an image and reads it back, ``flash_xz`` reads ``.img.xz`` images.
``image build --base FILE.img``: ``bootpart`` (the MBR and the FAT boot partition, through
mtools), ``firstboot`` (cloud-init or firstrun.sh settings, pure), ``enrol`` (the enrolment),
``installer`` (the first-boot installer put on the image) and ``customize`` (the steps).
``image build --base debian``: ``rootfs`` (the cached Debian arm64 root filesystem, shared with
tests/armvm.py) and ``debian`` (the bundle installed at build time, the disk assembled without
loop devices). See docs/images.md.
"""
