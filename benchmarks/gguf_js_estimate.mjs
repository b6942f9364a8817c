// The JavaScript peers of benchmarks/bench_memory.py: one estimate per process, printed as JSON.
//
//   node benchmarks/gguf_js_estimate.mjs NODE_MODULES '{"tool": "gguf.js"|"node-llama-cpp", "model": PATH,
//        "ctx": N, "ngl": N, "ctk": "f16", "ctv": "f16", "fa": true, "np": 1, "ubatch": 512}'
//
// gguf.js: @huggingface/gguf's `gguf-view` (dist/cli.js) prints a "Memory usage estimation" table; this
// repeats its arithmetic (src/cli.ts: calcMemoryUsage and main) on the same parse (ggufAllShards) in
// bytes, since the CLI rounds to 0.01 GB. It takes only the context length: the KV cache is always
// F16 and on the GPU, every weight counts, overhead = KV at 256 tokens + 5% of the weights.
// bench_memory.py checks the figure against the CLI's printed TOTAL.
//
// node-llama-cpp: GgufInsights.estimateModelResourceRequirements + estimateContextResourceRequirements
// (gpuVram of each, added as its configuration resolver adds them), the heuristic that `inspect
// estimate` falls back on when it cannot load the model into its own llama.cpp build to measure it
// (its GPU simulation needs a GPU binary, @node-llama-cpp/linux-x64-cuda, and a GPU).

import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modulesDir, reqText] = process.argv.slice(2);
const req = JSON.parse(reqText);
const load = (rel) => import(pathToFileURL(join(modulesDir, rel)).href);

// ggml's block size and bytes per block; gguf.js's GGML_QUANT_SIZES is bits per weight = 8 * bytes / block
const GGML_BLOCK = {
	0: [1, 4], 1: [1, 2], 2: [32, 18], 3: [32, 20], 6: [32, 22], 7: [32, 24], 8: [32, 34], 9: [32, 40],
	10: [256, 84], 11: [256, 110], 12: [256, 144], 13: [256, 176], 14: [256, 210], 15: [256, 292],
	16: [256, 66], 17: [256, 74], 18: [256, 98], 19: [256, 50], 20: [32, 18], 21: [256, 110], 22: [256, 82],
	23: [256, 136], 24: [1, 1], 25: [1, 2], 26: [1, 4], 27: [1, 8], 28: [1, 8], 29: [256, 56], 30: [1, 2],
	34: [256, 54], 35: [256, 66], 39: [32, 17],
};
const bitsPerWeight = (t) => {
	const b = GGML_BLOCK[t];
	if (!b) throw new Error(`ggml type ${t} not in the table`);
	return (8 * b[1]) / b[0];
};

async function ggufJs() {
	const { ggufAllShards } = await load("@huggingface/gguf/dist/index.mjs");
	const t0 = performance.now();
	const { shards } = await ggufAllShards(req.model, { allowLocalFile: true });
	const { metadata, tensorInfos } = shards[0];
	for (let i = 1; i < shards.length; i++) tensorInfos.push(...shards[i].tensorInfos);
	// calcMemoryUsage(metadata, kvSize) of src/cli.ts, F16 K and V
	const kv = (kvSize) => {
		const arch = metadata["general.architecture"] ?? "unknown";
		const n_embd = metadata[`${arch}.embedding_length`] ?? 0;
		const n_head = metadata[`${arch}.attention.head_count`] ?? 0;
		const hk = metadata[`${arch}.attention.key_length`] ?? n_embd / n_head;
		const hv = metadata[`${arch}.attention.value_length`] ?? n_embd / n_head;
		const n_head_kv = metadata[`${arch}.attention.head_count_kv`] ?? [];
		const n_layer = metadata[`${arch}.block_count`] ?? 0;
		if (arch.startsWith("mamba") || arch.startsWith("rwkv")) throw new Error(`arch ${arch} not supported`);
		const heads = Array(n_layer).fill(n_head);
		for (let i = 0; i < n_layer; i++) {
			if (Array.isArray(n_head_kv)) {
				if (n_head_kv[i]) heads[i] = n_head_kv[i];
			} else heads[i] = n_head_kv;
		}
		let k = 0;
		let v = 0;
		for (let i = 0; i < n_layer; i++) {
			k += hk * heads[i] * kvSize;
			v += hv * heads[i] * kvSize;
		}
		return (k + v) * (bitsPerWeight(1) / 8);
	};
	let weights = 0;
	for (const ti of tensorInfos) {
		const n = Number(ti.shape.reduce((a, b) => a * b, 1n));
		weights += n * (bitsPerWeight(ti.dtype) / 8);
	}
	const kvBytes = kv(req.ctx);
	const overhead = kv(256) + weights * 0.05;
	const total = kvBytes + overhead + weights;
	return { gpu_bytes: total, parts: { kv: kvBytes, weights, overhead }, estimate_ms: performance.now() - t0 };
}

async function nodeLlamaCpp() {
	const { readGgufFileInfo, GgufInsights, GgmlType } = await load("node-llama-cpp/dist/index.js");
	const t0 = performance.now();
	const info = await readGgufFileInfo(req.model, { sourceType: "filesystem", logWarnings: false });
	const insights = await GgufInsights.from(info);
	const gpuLayers = req.ngl < 0 ? insights.totalLayers : Math.min(req.ngl, insights.totalLayers);
	const type = (t) => GgmlType[t.toUpperCase()];
	const model = insights.estimateModelResourceRequirements({ gpuLayers, useMmap: true, gpuSupportsMmap: false });
	const context = insights.estimateContextResourceRequirements({
		contextSize: req.ctx,
		modelGpuLayers: gpuLayers,
		batchSize: req.ubatch,
		sequences: req.np,
		flashAttention: req.fa,
		kvCacheKeyType: type(req.ctk),
		kvCacheValueType: type(req.ctv),
	});
	return {
		gpu_bytes: model.gpuVram + context.gpuVram,
		parts: { model: model.gpuVram, context: context.gpuVram, gpu_layers: gpuLayers },
		estimate_ms: performance.now() - t0,
	};
}

const out = req.tool === "gguf.js" ? await ggufJs() : await nodeLlamaCpp();
process.stdout.write(JSON.stringify(out) + "\n");
