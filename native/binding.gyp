{
  "targets": [
    {
      "target_name": "ckpt_native",
      "sources": ["src/addon.cc", "src/kernels.cc", "src/encode.cc", "src/addon_checksum.cc", "src/checksum.cc", "src/checksum_xxh3_avx2.cc", "src/copy_piece.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "include"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags": ["-O3", "-fno-strict-aliasing", "-ffp-contract=off", "-fvisibility=hidden"],
      "cflags_cc": ["-O3", "-std=gnu++17", "-ffp-contract=off", "-fvisibility=hidden"],
      "cflags!": ["-O2"],
      "cflags_cc!": ["-O2"],
      "xcode_settings": {
        "GCC_OPTIMIZATION_LEVEL": "3",
        "CLANG_CXX_LANGUAGE_STANDARD": "gnu++17",
        "OTHER_CFLAGS": ["-ffp-contract=off"]
      },
      "libraries": ["-ldl"]
    }
  ]
}
