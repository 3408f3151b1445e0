// A real express-session + connect-redis application for the interop test
// (tests/session_express.rs): it logs users in and out, the gateway reads its
// sessions. Env: PORT, REDIS_URL, SESSION_SECRET_CURRENT, SESSION_SECRET_PREVIOUS.
"use strict";

const express = require("express");
const session = require("express-session");
const RedisStore = require("connect-redis").default;
const { createClient } = require("redis");

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`missing env ${name}`);
    process.exit(2);
  }
  return v;
}

async function main() {
  const port = Number(need("PORT"));
  const client = createClient({ url: need("REDIS_URL") });
  client.on("error", (err) => console.error("redis error:", err.message));
  await client.connect();

  const app = express();
  app.use(express.json());
  app.use(express.urlencoded({ extended: false }));
  app.use(
    session({
      store: new RedisStore({ client, prefix: "sess:" }),
      secret: [need("SESSION_SECRET_CURRENT"), need("SESSION_SECRET_PREVIOUS")],
      name: "sid",
      resave: false,
      saveUninitialized: false,
      cookie: { maxAge: 60 * 60 * 1000 },
    }),
  );

  app.get("/health", (req, res) => res.json({ ok: true }));

  // POST /login, form `user=alice` or JSON {"user": "alice"} (any JSON value is
  // stored as given, so {"user": 42} stores a numeric userId).
  app.post("/login", (req, res, next) => {
    const user = req.body && req.body.user;
    if (user === undefined || user === null || user === "") {
      return res.status(400).json({ error: "user required" });
    }
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.userId = user;
      req.session.role = "admin";
      req.session.save((err) => {
        if (err) return next(err);
        res.json({ ok: true, user, sid: req.sessionID });
      });
    });
  });

  app.post("/logout", (req, res, next) => {
    const sid = req.sessionID;
    req.session.destroy((err) => {
      if (err) return next(err);
      res.clearCookie("sid", { path: "/" });
      res.json({ ok: true, sid });
    });
  });

  const server = app.listen(port, "127.0.0.1", () => {
    console.log(`express interop app listening on 127.0.0.1:${port}`);
  });
  const stop = () => {
    server.close();
    client.quit().finally(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
