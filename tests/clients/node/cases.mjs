// The Node clients of the compatibility matrix:
//   node cases.mjs [case ...]        (every case when none is named)
// with MUX_BASE_URL (the gateway's /v1), MUX_API_KEY, MUX_IMAGE (a PNG file for
// edits) and MUX_MODEL_GPT / MUX_MODEL_OTHER (model ids) in the environment. Each
// client is built from nothing but the base URL and the key. Prints one JSON line
// per case, {"case", "ok", "result"} or {"case", "ok": false, "error"}: what the
// client handed back, summarised (image formats and sizes from the bytes), or what
// it threw; pytest (tests/clients/test_node_clients.py) judges it.
import { readFile } from "node:fs/promises";

import { createOpenAI } from "@ai-sdk/openai";
import { generateImage } from "ai";
import OpenAI, { toFile } from "openai";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const baseURL = env("MUX_BASE_URL");
const apiKey = env("MUX_API_KEY");
const gptModel = env("MUX_MODEL_GPT");
const otherModel = env("MUX_MODEL_OTHER");

// Format and size of an image, read from its bytes (PNG, JPEG or WebP).
function describe(bytes) {
  const b = Buffer.from(bytes);
  if (b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) {
    return { format: "png", width: b.readUInt32BE(16), height: b.readUInt32BE(20) };
  }
  if (b[0] === 0xff && b[1] === 0xd8) return { format: "jpeg", bytes: b.length };
  if (b.subarray(0, 4).toString() === "RIFF" && b.subarray(8, 12).toString() === "WEBP") {
    return { format: "webp", bytes: b.length };
  }
  return { format: "unknown", bytes: b.length };
}

async function fetched(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
  return describe(new Uint8Array(await response.arrayBuffer()));
}

// What an OpenAI images response holds: each image as url or b64_json, described.
async function images(data) {
  return Promise.all(data.map(async (item) => item.b64_json
    ? { kind: "b64_json", ...describe(Buffer.from(item.b64_json, "base64")) }
    : { kind: "url", ...(await fetched(item.url)) }));
}

async function streamed(stream) {
  const events = [];
  for await (const event of stream) {
    events.push({ type: event.type, ...describe(Buffer.from(event.b64_json, "base64")),
                  index: event.partial_image_index ?? null, size: event.size ?? null,
                  output_format: event.output_format ?? null,
                  usage: event.usage ? Object.keys(event.usage).sort() : null });
  }
  return events;
}

const openai = () => new OpenAI({ baseURL, apiKey });
const vercel = () => createOpenAI({ baseURL, apiKey });
const png = () => readFile(env("MUX_IMAGE"));

const cases = {
  // openai-node
  async "openai-node generate"() {
    const response = await openai().images.generate({ model: otherModel, prompt: "a red fox" });
    return { created: response.created, images: await images(response.data) };
  },
  async "openai-node generate gpt-image"() {
    const response = await openai().images.generate({
      model: gptModel, prompt: "a red fox", size: "1024x1536", quality: "low" });
    return { created: response.created, images: await images(response.data),
             size: response.size ?? null, quality: response.quality ?? null };
  },
  async "openai-node edit toFile"() {
    const image = await toFile(await png(), "fox.png", { type: "image/png" });
    const response = await openai().images.edit({ model: gptModel, image,
                                                  prompt: "the fox as a watercolor" });
    return { images: await images(response.data) };
  },
  async "openai-node edit toFile two images"() {
    const files = await Promise.all(["a.png", "b.png"].map(
      async (name) => toFile(await png(), name, { type: "image/png" })));
    const response = await openai().images.edit({ model: otherModel, image: files,
                                                  prompt: "both foxes", n: 2 });
    return { images: await images(response.data) };
  },
  async "openai-node generate stream"() {
    const stream = await openai().images.generate({
      model: gptModel, prompt: "a red fox", stream: true, partial_images: 2 });
    return { events: await streamed(stream) };
  },
  async "openai-node edit stream"() {
    const image = await toFile(await png(), "fox.png", { type: "image/png" });
    const stream = await openai().images.edit({
      model: gptModel, image, prompt: "the fox at night", stream: true, partial_images: 1 });
    return { events: await streamed(stream) };
  },
  async "openai-node error"() {
    try {
      await openai().images.generate({ model: "no-such-model", prompt: "x" });
    } catch (error) {
      return { name: error.constructor.name, status: error.status, code: error.code ?? null,
               param: error.param ?? null, type: error.type ?? null };
    }
    throw new Error("no error raised");
  },
  // Vercel AI SDK
  async "ai-sdk generateImage gpt-image"() {
    const result = await generateImage({ model: vercel().image(gptModel), prompt: "a red fox" });
    return { images: result.images.map((file) => describe(file.uint8Array)),
             mediaType: result.image.mediaType, warnings: result.warnings };
  },
  async "ai-sdk generateImage other"() {
    const result = await generateImage({ model: vercel().image(otherModel), prompt: "a red fox",
                                         size: "1024x1024" });
    return { images: result.images.map((file) => describe(file.uint8Array)),
             mediaType: result.image.mediaType, warnings: result.warnings };
  },
  async "ai-sdk generateImage gpt-image references"() {
    const data = await png();
    const result = await generateImage({
      model: vercel().image(gptModel),
      prompt: { text: "the fox as a watercolor", images: [data] } });
    return { images: result.images.map((file) => describe(file.uint8Array)),
             mediaType: result.image.mediaType };
  },
  async "ai-sdk generateImage other references"() {
    const data = await png();
    const result = await generateImage({
      model: vercel().image(otherModel),
      prompt: { text: "the two foxes together", images: [data, data] } });
    return { images: result.images.map((file) => describe(file.uint8Array)),
             mediaType: result.image.mediaType };
  },
};

const names = process.argv.length > 2 ? process.argv.slice(2) : Object.keys(cases);
for (const name of names) {
  if (!(name in cases)) {
    console.error(`unknown case ${JSON.stringify(name)}; cases: ${Object.keys(cases).join(", ")}`);
    process.exit(2);
  }
}
for (const name of names) {
  try {
    console.log(JSON.stringify({ case: name, ok: true, result: await cases[name]() }));
  } catch (error) {
    const body = error.responseBody ? ` (response: ${error.responseBody})` : "";
    console.log(JSON.stringify({ case: name, ok: false,
                                 error: `${error.constructor.name}: ${error.message}${body}` }));
  }
}
