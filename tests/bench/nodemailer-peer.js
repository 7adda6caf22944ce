#!/usr/bin/env node
// The peer the `deployment` bench compares Postbridge with: nodemailer with a pool of 4 connections sending COUNT
// messages (the same shape as the bench's) to the same SMTP server, as fast as it can. Prints one line:
//   sent COUNT in SECONDS
// Usage: NODE_PATH=tests/mail-servers/node_modules node nodemailer-peer.js PORT LOGIN PASSWORD CA_FILE COUNT [nodelay]
// `nodelay` hands nodemailer sockets with Nagle's algorithm off (nodemailer leaves it on, and each of its small
// writes then waits for the server's delayed ACK); Postbridge's own client turns it off.
'use strict';

const fs = require('fs');
const net = require('net');
const nodemailer = require('nodemailer');

async function main() {
    const [port, login, password, caFile, countText, mode] = process.argv.slice(2);
    const count = Number(countText);
    const noDelaySocket = (options, callback) => {
        const socket = net.connect(Number(port), '127.0.0.1', () => callback(null, { connection: socket }));
        socket.setNoDelay(true);
        socket.once('error', callback);
    };
    const transport = nodemailer.createTransport({
        host: '127.0.0.1',
        port: Number(port),
        secure: false,
        requireTLS: true,
        tls: { ca: fs.readFileSync(caFile), servername: 'localhost' },
        auth: { user: login, pass: password },
        pool: true,
        maxConnections: 4,
        maxMessages: Infinity,
        ...(mode === 'nodelay' ? { getSocket: noDelaySocket } : {}),
    });
    // One message first opens the pool; the clock starts after it.
    await transport.sendMail({ from: login, to: 'peer@example.org', subject: 'peer warm-up', text: 'hello' });
    const started = process.hrtime.bigint();
    const sends = [];
    for (let i = 0; i < count; i++) {
        sends.push(transport.sendMail({ from: login, to: 'peer@example.org', subject: `peer ${i}`, text: 'hello' }));
    }
    await Promise.all(sends);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    transport.close();
    console.log(`sent ${count} in ${seconds.toFixed(3)}`);
}

main().catch((error) => {
    console.error(error);
    process.exit(1);
});
