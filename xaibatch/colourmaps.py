"""The overlays' two colour maps as packed tables: matplotlib's ``inferno`` (unsigned maps) and ``RdBu_r`` (signed:
red = evidence for the explained class, blue = against), each its 256 colours then its colour for NaN, as RGB
hex triples here, packed into one uint32 word a colour whose bytes are R, G, B, 0 (overlay._lookup unpacks them).

Written out so that a run colours its maps without importing matplotlib (0.3 s on the 2-core box, on the first
batch's path); tests/test_overlay.py checks them against matplotlib's own, colour for colour.
"""

from __future__ import annotations

import numpy as np

_INFERNO = (
    "00000300000400000601000701010901010b02010e02021003021204031404031605041806041b07051d08061f0906210a07230b0726"
    "0d08280e082a0f092d10092f120a32130a34140b36160b39170b3b190b3e1a0b401c0c431d0c451f0c47200c4a220b4c240b4e260b50"
    "270b52290b542b0a562d0a582e0a5a300a5c32095d34095f3509603709613909623b09643c09653e0966400966410967430a68450a69"
    "460a69480b6a4a0b6a4b0c6b4d0c6b4f0d6c500d6c520e6c530e6d550f6d570f6d58106d5a116d5b116e5d126e5f126e60136e62146e"
    "63146e65156e66156e68166e6a176e6b176e6d186e6e186e70196e72196d731a6d751b6d761b6d781c6d7a1c6d7b1d6c7d1d6c7e1e6c"
    "801f6b811f6b83206b85206a86216a88216a8922698b22698d23698e24689024689125679325679526669626669827659928649b2864"
    "9c29639e2963a02a62a12b61a32b61a42c60a62c5fa72d5fa92e5eab2e5dac2f5cae305baf315bb1315ab23259b43358b53357b73456"
    "b83556ba3655bb3754bd3753be3852bf3951c13a50c23b4fc43c4ec53d4dc73e4cc83e4bc93f4acb4049cc4148cd4247cf4446d04544"
    "d14643d24742d44841d54940d64a3fd74b3ed94d3dda4e3bdb4f3adc5039dd5238de5337df5436e05634e25733e35832e45a31e55b30"
    "e65c2ee65e2de75f2ce8612be9622aea6428eb6527ec6726ed6825ed6a23ee6c22ef6d21f06f1ff0701ef1721df2741cf2751af37719"
    "f37918f47a16f57c15f57e14f68012f68111f78310f7850ef8870df8880cf88a0bf98c09f98e08f99008fa9107fa9306fa9506fa9706"
    "fb9906fb9b06fb9d06fb9e07fba007fba208fba40afba60bfba80dfbaa0efbac10fbae12fbb014fbb116fbb318fbb51afbb71cfbb91e"
    "fabb21fabd23fabf25fac128f9c32af9c52cf9c72ff8c931f8cb34f8cd37f7cf3af7d13cf6d33ff6d542f5d745f5d948f4db4bf4dc4f"
    "f3de52f3e056f3e259f2e45df2e660f1e864f1e968f1eb6cf1ed70f1ee74f1f079f1f27df2f381f2f485f3f689f4f78df5f891f6fa95"
    "f7fb99f9fc9dfafda0fcfea4000000"
)

_RDBU_R = (
    "05306106326307346608366909386c0a3a6f0b3c720c3e750d40780e437b0f457e114781124984134b87144d8a154f8d165190175493"
    "1856951958981a5a9b1c5c9e1d5ea11e60a41f62a72064aa2166ac2368ad246aae256caf276db0286fb02971b12b73b22c75b32d76b4"
    "2f78b5307ab6317cb7337db8347fb93581b93783ba3884bb3986bc3b88bd3c8abe3d8bbf3f8dc0408fc14191c24393c34694c44996c5"
    "4c98c64f9ac7529cc8559ec958a0ca5ba2cb5ea4cc61a6cd65a8ce68aacf6bacd06eaed171b0d274b2d377b4d57ab6d67db8d780bad8"
    "84bcd987beda8ac0db8dc2dc90c4dd93c5de95c6df98c8df9ac9e09dcae19fcbe1a2cde2a4cee3a7cfe4a9d0e4abd2e5aed3e6b0d4e6"
    "b3d5e7b5d7e8b8d8e8bad9e9bddaeabfdcebc2ddebc4deecc7dfedc9e1edcce2eecee3efd1e5f0d2e5f0d3e6f0d5e7f0d6e7f1d8e8f1"
    "d9e9f1dbe9f1dceaf2deebf2dfecf2e1ecf3e2edf3e4eef3e5eef3e7eff4e8f0f4eaf1f4ebf1f4edf2f5eef3f5f0f3f5f1f4f6f3f5f6"
    "f4f5f6f6f6f6f7f6f6f7f5f4f7f4f2f7f3f0f8f2eef8f0ecf8efeaf8eee8f9ede7f9ece5f9ebe3f9eae1f9e9dffae8ddfae7dbfae5d9"
    "fae4d7fbe3d6fbe2d4fbe1d2fbe0d0fcdfcefcdeccfcddcafcdcc8fddbc7fcd8c4fcd6c1fbd4befbd2bcfbd0b9faceb6faccb4facab1"
    "f9c7aef9c5abf9c3a9f8c1a6f8bfa3f8bda1f7bb9ef7b99bf7b799f6b496f6b293f5b090f5ae8ef5ac8bf4aa88f4a886f4a683f3a380"
    "f2a07ef19e7cef9b7aee9878ed9676ec9374eb9072ea8e70e88b6ee7886ce6856ae58368e48065e27d63e17b61e0785fdf755dde725b"
    "dd7059db6d57da6a55d96853d86551d7624fd6604dd45d4bd35a4ad15749d05447ce5146cd4f45cc4c43ca4942c94641c7433fc6403e"
    "c53e3cc33b3bc2383ac03538bf3237be3036bc2d34bb2a33b92732b82431b6212fb51f2eb41c2db2192bb0172aad162aaa1529a71429"
    "a41328a112289e11279b1027991027960f26930e26900d258d0c258a0b24870a248409238108237e07227b0622780521750421720320"
    "6f02206c011f69001f67001f000000"
)


def _table(hex_rgb: str) -> np.ndarray:
    rgb = np.frombuffer(bytes.fromhex(hex_rgb), dtype=np.uint8).reshape(-1, 3)
    packed = np.zeros((len(rgb), 4), dtype=np.uint8)
    packed[:, :3] = rgb
    return packed.view(np.uint32)[:, 0]


def packed(name: str) -> np.ndarray:
    """The colour map ``name`` ("inferno" or "RdBu_r") as 257 packed uint32 words (see the module's text)."""
    return _table({"inferno": _INFERNO, "RdBu_r": _RDBU_R}[name])
