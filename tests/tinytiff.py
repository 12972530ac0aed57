"""A minimal TIFF writer for sample layouts PIL cannot write (float colour, many channels)."""

import struct


def tiff(spp, bits, fmt, w=2, h=2):
    """A minimal little-endian, uncompressed, chunky TIFF with spp samples of `bits` bits (SampleFormat fmt)."""
    data = bytes(w * h * spp * bits // 8)
    bps_off = 8
    bps = struct.pack("<%dH" % spp, *([bits] * spp))
    fmts = struct.pack("<%dH" % spp, *([fmt] * spp))
    fmt_off = bps_off + len(bps)
    data_off = fmt_off + len(fmts)
    ifd_off = data_off + len(data)
    ifd_off += ifd_off % 2
    tags = [
        (256, 3, 1, w),
        (257, 3, 1, h),
        (258, 3, spp, bps_off if spp > 2 else bits),
        (259, 3, 1, 1),
        (262, 3, 1, 2 if spp >= 3 else 1),
        (273, 4, 1, data_off),
        (277, 3, 1, spp),
        (278, 3, 1, h),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
        (339, 3, spp, fmt_off if spp > 2 else fmt),
    ]
    if spp > 3:
        tags.insert(-1, (338, 3, spp - 3, 0))  # ExtraSamples: unspecified
        tags.sort()
    body = b"II*\0" + struct.pack("<I", ifd_off) + bps + fmts + data
    body += b"\0" * (ifd_off - len(body))
    ifd = (
        struct.pack("<H", len(tags))
        + b"".join(struct.pack("<HHII", t, ty, c, v) for t, ty, c, v in tags)
        + struct.pack("<I", 0)
    )
    return body + ifd
