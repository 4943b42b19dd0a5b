// The seed's chat flow with the Copilot Node SDK, on climesh: the SDK spawns
// climesh-connect as if it were the CLI (stdio), and climesh-connect carries the
// connection to the mesh with the caller's token. Nothing here knows about
// instances, balancing or ownership.
//
//   CLIMESH_CONNECT=climesh-connect CLIMESH_EDGE=ws://127.0.0.1:10000/v1/rpc \
//   CLIMESH_TOKEN=<bearer token> MODEL=gpt-4.1 PROVIDER_URL=... PROVIDER_KEY=... node chat.mjs
//
// It prints one JSON line per step and exits non-zero on the first failure.
import { CopilotClient, RuntimeConnection, approveAll } from "@github/copilot-sdk";

const need = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`chat.mjs: set ${name}`);
    process.exit(2);
  }
  return v;
};

const connection = RuntimeConnection.forStdio({
  path: need("CLIMESH_CONNECT"),
  env: { ...process.env, CLIMESH_EDGE: need("CLIMESH_EDGE"), CLIMESH_TOKEN: need("CLIMESH_TOKEN") },
});
const provider = { type: "openai", baseUrl: need("PROVIDER_URL"), apiKey: process.env.PROVIDER_KEY ?? "" };
const model = process.env.MODEL ?? "gpt-4.1";
const step = (name, fields) => console.log(JSON.stringify({ step: name, ...fields }));

const client = new CopilotClient({ connection });
try {
  await client.start();

  // Persistent chat: start, two messages (the second sees the first), end.
  const session = await client.createSession({ model, provider, onPermissionRequest: approveAll });
  step("start", { sessionId: session.sessionId });
  for (const prompt of ["hello from node", "and again"]) {
    const reply = await session.sendAndWait({ prompt }, 60_000);
    step("message", { prompt, content: reply?.data.content });
  }
  await session.disconnect();

  // Resume it later, as the seed's /api/chat/message does.
  const resumed = await client.resumeSession(session.sessionId, { model, provider, onPermissionRequest: approveAll });
  const reply = await resumed.sendAndWait({ prompt: "after resume" }, 60_000);
  step("resume", { content: reply?.data.content });
  await resumed.disconnect();
  await client.deleteSession(session.sessionId);
  step("end", { sessionId: session.sessionId });

  // Ephemeral analysis.
  const once = await client.createSession({ model, provider, onPermissionRequest: approveAll });
  const result = await once.sendAndWait({ prompt: "analyze this" }, 60_000);
  await once.disconnect();
  step("analyze", { result: result?.data.content });
} catch (err) {
  step("error", { message: String(err?.message ?? err) });
  process.exitCode = 1;
} finally {
  await client.stop();
}
