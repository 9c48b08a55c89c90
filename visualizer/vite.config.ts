// Builds the app into the Python package (rlm/viewer/static) so `rlm view` needs no Node.
// JSX goes through esbuild directly: no Babel, no React plugin (fast refresh is not needed).
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const outDir = fileURLToPath(new URL("../rlm/viewer/static", import.meta.url));

export default defineConfig({
  base: "./",
  esbuild: { jsx: "automatic" },
  build: {
    outDir,
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
  server: {
    // `npm run dev`: open http://localhost:5173/?token=TOKEN with the token `rlm view --port 8790`
    // printed; API calls go to that server.
    proxy: { "/api": { target: "http://127.0.0.1:8790", changeOrigin: true } },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
