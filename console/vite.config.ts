/// <reference types="vitest/config" />
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";
import { fileURLToPath } from "node:url";

// The console is served by the sojourn binary at `/`, on the API's origin.
// `npm run dev` proxies the API to a local `sojourn dev` (SOJOURN_URL).
const api = process.env.SOJOURN_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [react()],
  resolve: {
    alias: { "@rjsf/validator-ajv8": fileURLToPath(new URL("./src/lib/no-ajv.ts", import.meta.url)) },
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // Hashed names: the binary serves `assets/` as immutable.
    assetsDir: "assets",
    chunkSizeWarningLimit: 900,
  },
  server: {
    proxy: Object.fromEntries(
      ["/v1", "/healthz", "/readyz", "/cluster", "/openapi.json", "/metrics"].map((p) => [p, api]),
    ),
  },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}"],
  },
});
