"use strict";

// An Express server on $PORT (3011 in the image).
const express = require("express");

const app = express();
const port = Number(process.env.PORT || 3011);

app.get("/", (req, res) => {
  res.json({ message: "hello from imagedsl", express: require("express/package.json").version });
});

app.get("/healthz", (req, res) => {
  res.type("text/plain").send("ok\n");
});

const server = app.listen(port, () => {
  console.log(`listening on port ${port}`);
});

// As PID 1 in a container, node must handle SIGTERM itself to stop promptly.
process.on("SIGTERM", () => server.close(() => process.exit(0)));
