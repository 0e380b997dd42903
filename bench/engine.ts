// Engine overheads: host time to record and submit a step of small dispatches.

import { gpu } from "../lib/gpu/device.ts";
import { addScalar, full, tidy } from "../lib/tensor/mod.ts";
import type { BenchCase } from "./harness.ts";

export const cases: BenchCase[] = [
  {
    name: "host overhead: 100 small dispatches",
    async run() {
      const recorder = gpu().recorder;
      const x = full([1024], 1);
      const step = () => {
        let t = x;
        for (let i = 0; i < 100; i++) t = addScalar(t, 1);
        return t;
      };
      for (let i = 0; i < 3; i++) tidy(() => void step());
      await recorder.sync();
      // Host side only: record + submit, without waiting for the GPU.
      const rounds = 20;
      let hostMs = 0;
      for (let r = 0; r < rounds; r++) {
        const t0 = performance.now();
        tidy(() => void step());
        recorder.flush();
        hostMs += performance.now() - t0;
        await recorder.sync();
      }
      x.dispose();
      return { name: "host overhead: 100 small dispatches", ms: hostMs / rounds };
    },
  },
];
