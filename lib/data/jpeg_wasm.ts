// JPEG decoding through mozjpeg (libjpeg-turbo's decoder) compiled to WebAssembly, from
// npm:@jsquash/jpeg: 2–4× the speed of jpeg-js on photos (bench/shard.ts, "decode" cases).
//
// The .wasm file is brought in by a bytes import (deno.json: "unstable": ["raw-imports"]), so Deno
// loads it as part of the module graph, and `deno compile` embeds it: no read permission on the
// npm cache and no fetch. Instantiation is synchronous (we hand
// the compiled module to emscripten's instantiateWasm hook), so decoding is synchronous too and
// decodeImage (lib/data/decode.ts) keeps its signature.
//
// libjpeg is more forgiving than jpeg-js: it fills a truncated scan with grey after a warning and
// substitutes the standard Huffman tables when a file defines none. A shard must not silently hold
// half-grey images, so `decodeJpegWasm` answers null (the caller then asks jpeg-js, whose verdict
// is final) whenever libjpeg printed a warning or stopped with an error, and for files it should
// not be trusted with: no Huffman table before the first scan, or not 1 or 3 components (CMYK and
// YCCK, which libjpeg does not convert to RGB).

import mozjpegWasmBytes from "@jsquash/jpeg/codec/dec/mozjpeg_dec.wasm" with { type: "bytes" };
import mozjpegFactory from "@jsquash/jpeg/codec/dec/mozjpeg_dec.js";

interface MozjpegModule {
  /** Second argument: apply EXIF orientation (we pass false and orient in decode.ts). */
  decode(
    data: Uint8Array,
    rotate: boolean,
  ): { data: Uint8ClampedArray; width: number; height: number } | null;
}

/** Messages libjpeg printed during the current decode (warnings, then the fatal error if any). */
const messages: string[] = [];
let decoder: MozjpegModule | null = null;
let mozjpegWasm: WebAssembly.Module | null = null;

/** A fresh decoder instance (after libjpeg's error exit the old one's state is unusable). */
function instantiate(): MozjpegModule {
  const module: Record<string, unknown> = {
    noInitialRun: true,
    print: (line: string) => messages.push(line),
    printErr: (line: string) => messages.push(line),
    instantiateWasm(
      imports: WebAssembly.Imports,
      receive: (instance: WebAssembly.Instance) => void,
    ) {
      mozjpegWasm ??= new WebAssembly.Module(mozjpegWasmBytes);
      const instance = new WebAssembly.Instance(mozjpegWasm, imports);
      receive(instance);
      return instance.exports;
    },
  };
  // With a synchronous instantiateWasm, emscripten finishes initialising before the factory
  // returns, and `module` already has `decode` (the returned promise only repeats that).
  // deno-lint-ignore no-explicit-any
  (mozjpegFactory as any)(module);
  if (typeof module.decode !== "function") {
    throw new Error("peco: decode: the mozjpeg WebAssembly decoder did not initialise");
  }
  return module as unknown as MozjpegModule;
}

/** True when a Huffman table (DHT) precedes the first scan (SOS) of a JPEG. */
export function definesHuffmanTables(bytes: Uint8Array): boolean {
  let at = 2;
  while (at + 4 <= bytes.length && bytes[at] === 0xff) {
    const marker = bytes[at + 1];
    if (marker === 0xff) {
      at++;
      continue;
    }
    if (marker === 0xc4) return true;
    if (marker === 0xda || marker === 0xd9) return false;
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      at += 2;
      continue;
    }
    at += 2 + ((bytes[at + 2] << 8) | bytes[at + 3]);
  }
  return false;
}

/**
 * Interleaved RGBA pixels of a JPEG as stored (EXIF orientation not applied), or null when the
 * file must go to jpeg-js instead (see the top of this file). `components` is the frame's
 * component count from the header.
 */
export function decodeJpegWasm(
  bytes: Uint8Array,
  components: number,
): { data: Uint8Array; width: number; height: number } | null {
  if ((components !== 1 && components !== 3) || !definesHuffmanTables(bytes)) return null;
  decoder ??= instantiate();
  messages.length = 0;
  try {
    const image = decoder.decode(bytes, false);
    if (!image || messages.length) return null;
    const { data, width, height } = image;
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width, height };
  } catch {
    decoder = null; // libjpeg's error exit ends in emscripten's exit(): start afresh next time
    return null;
  }
}
