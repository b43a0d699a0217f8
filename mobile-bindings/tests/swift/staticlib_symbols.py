"""Checks the iOS static library: an ar archive of arm64 Mach-O objects whose symbol table
(`__.SYMDEF`, which the Xcode linker reads) defines every function the generated C
header declares. GNU nm cannot read Mach-O, so the BSD archive format is read here.

usage: staticlib_symbols.py LIBRARY.a HEADER.h
"""

import re
import struct
import sys
from pathlib import Path

DECLARATION = re.compile(r"^(?!typedef\b)[A-Za-z_]\w*[\s*]+([A-Za-z_]\w*)\(", re.M)
MH_MAGIC_64 = 0xFEEDFACF
CPU_TYPE_ARM64 = 0x0100000C


def members(data: bytes):
    """(name, bytes) of every member of a BSD or GNU ar archive."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip()
        size = int(header[48:58].decode().strip())
        body = data[pos + 60:pos + 60 + size]
        if name.startswith("#1/"):  # BSD: the name follows the header
            length = int(name[3:])
            name, body = body[:length].rstrip(b"\0").decode(), body[length:]
        yield name, body
        pos += 60 + size + (size & 1)


def symdef(body: bytes) -> set[str]:
    """The symbol names of a BSD `__.SYMDEF` table (32-bit little-endian offsets)."""
    (ranlib_bytes,) = struct.unpack_from("<I", body, 0)
    strtab_at = 4 + ranlib_bytes + 4
    (strtab_size,) = struct.unpack_from("<I", body, 4 + ranlib_bytes)
    strtab = body[strtab_at:strtab_at + strtab_size]
    names = set()
    for i in range(ranlib_bytes // 8):
        strx, _offset = struct.unpack_from("<II", body, 4 + 8 * i)
        names.add(strtab[strx:strtab.index(b"\0", strx)].decode())
    return names


def main() -> int:
    library, header = Path(sys.argv[1]), Path(sys.argv[2])
    data = library.read_bytes()
    symbols: set[str] = set()
    objects = arm64 = 0
    for name, body in members(data):
        if name.startswith("__.SYMDEF"):
            symbols |= symdef(body)
        elif name.endswith(".o"):
            objects += 1
            if len(body) >= 8 and struct.unpack_from("<II", body, 0) == (MH_MAGIC_64, CPU_TYPE_ARM64):
                arm64 += 1
    declared = DECLARATION.findall(header.read_text())
    missing = [name for name in declared if "_" + name not in symbols]  # Mach-O prefixes '_'
    print(f"{library.name}: {len(data) // (1 << 20)} MiB, {objects} objects ({arm64} arm64 Mach-O), "
          f"{len(symbols)} symbols in its table; {len(declared) - len(missing)} of the header's "
          f"{len(declared)} functions defined")
    if not objects or arm64 != objects:
        print("FAIL: not an archive of arm64 Mach-O objects", file=sys.stderr)
        return 1
    if not declared or missing:
        print(f"FAIL: {len(missing)} declared functions missing, e.g. {missing[:5]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
