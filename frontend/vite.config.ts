// The dashboard is built into the Python package (steplog/server/dashboard/, shipped as
// package-data), so the web service serves it with no Node at run time and offline: every
// dependency is bundled, nothing is fetched from a CDN.
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

const outDir = fileURLToPath(new URL("../steplog/server/dashboard", import.meta.url));

export default defineConfig({
  plugins: [react()],
  base: "/",
  build: {
    outDir,
    emptyOutDir: true,
    // uPlot is the one sizeable library; one chunk keeps the service's static routes simple.
    chunkSizeWarningLimit: 600,
  },
  server: {
    // `npm run dev` against a running `steplog` web service (STEPLOG_API, default below).
    proxy: { "/v1": process.env.STEPLOG_API ?? "http://127.0.0.1:8000" },
  },
  test: {
    include: ["src/**/*.test.ts", "src/**/*.test.tsx"],
    environment: "node",
  },
});
