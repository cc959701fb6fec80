"""FormData, Blob and File in the js module (issue 20): request.formData()
on multipart and urlencoded uploads, FormData as a fetch()/Response body
(multipart, checked with Python's email parser), Blob/File, and the
max_body bound. Real heliosd, real js.so, hx_backend's /echo."""

import hashlib
import json
import os
from email.parser import BytesParser
from email.policy import HTTP

from conftest import upstream_conf
from test_js_api import start_js


def multipart(boundary, fields):
    """FIELDS: (name, value) or (name, (filename, content_type, bytes))."""
    out = b""
    for name, value in fields:
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, tuple):
            filename, ctype, data = value
            out += (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


SCRIPT = r"""
const hex = (b) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, '0')).join('');
async function describe(fd) {
  const out = [];
  for (const [name, v] of fd) {
    if (typeof v === 'string') out.push([name, v]);
    else out.push([name, { file: v.name, type: v.type, size: v.size, isFile: v instanceof File,
                           sha256: hex(await crypto.subtle.digest('SHA-256', await v.arrayBuffer())) }]);
  }
  return out;
}
export default {
  async fetch(request) {
    const p = new URL(request.url).pathname;
    try {
      if (p === '/parse') return Response.json(await describe(await request.formData()));
      if (p === '/send') {
        const fd = new FormData();
        fd.append('title', 'Héllo "quoted"\nline');
        fd.append('doc', new File(['file ', new Uint8Array([0, 1, 255]), ' end'], 'report.bin', { type: 'application/x-test' }));
        fd.append('blob', new Blob(['{"a":1}'], { type: 'application/json' }));
        fd.append('blob', new Blob(['second']), 'named.txt');
        const req = new Request('http://app/echo', { method: 'POST', body: fd });
        const echoed = await fetch(req);
        return new Response(echoed.body, { headers: { 'content-type': req.headers.get('content-type') } });
      }
      if (p === '/roundtrip') {
        const fd = new FormData();
        fd.append('a', '1');
        fd.append('a', '2');
        fd.set('b', 'x');
        fd.set('b', 'y');
        fd.append('f', new File(['contents'], 'c.txt', { type: 'text/plain' }));
        fd.append('gone', 'z');
        fd.delete('gone');
        const back = await new Response(fd).formData();
        const urlenc = await new Response(new URLSearchParams({ q: 'a b', r: 'é&' })).formData();
        const blob = new Blob(['hello ', 'world'], { type: 'Text/Plain' });
        const file = back.get('f');
        return Response.json({
          entries: await describe(back), getAll: back.getAll('a'), has: [back.has('b'), back.has('gone')],
          urlenc: [...urlenc], blob: [blob.size, blob.type, await blob.slice(6).text(), await blob.slice(-5, -2).text()],
          fileText: await file.text(), fileTs: typeof file.lastModified,
          cloned: await structuredClone(file).text(), clonedName: structuredClone(file).name,
          respBlob: await (await new Response(blob).blob()).text(),
          respType: new Response(blob).headers.get('content-type'),
        });
      }
    } catch (e) {
      return new Response(e.name + ': ' + e.message, { status: 400 });
    }
    return new Response('?', { status: 404 });
  },
};
"""


def test_request_form_data_parses_multipart_uploads(heliosd, tmp_path):
    h = start_js(heliosd, tmp_path, SCRIPT, max_body="2MiB")
    data = os.urandom(300_000)
    body = multipart("XyZ-boundary", [
        ("name", "Ünïcode välue"),
        ("upload", ("photo.jpg", "image/jpeg", data)),
        ("empty", ("", "application/octet-stream", b"")),
        ("name", "second"),
    ])
    status, _, resp = h.get("/parse", method="POST", body=body,
                            headers={"Content-Type": 'multipart/form-data; boundary="XyZ-boundary"'})
    assert status == 200, resp
    assert json.loads(resp) == [
        ["name", "Ünïcode välue"],
        ["upload", {"file": "photo.jpg", "type": "image/jpeg", "size": len(data), "isFile": True,
                    "sha256": hashlib.sha256(data).hexdigest()}],
        ["empty", {"file": "", "type": "application/octet-stream", "size": 0, "isFile": True,
                   "sha256": hashlib.sha256(b"").hexdigest()}],
        ["name", "second"],
    ]


def test_request_form_data_parses_urlencoded_forms_and_refuses_others(heliosd, tmp_path):
    h = start_js(heliosd, tmp_path, SCRIPT)
    status, _, resp = h.get("/parse", method="POST", body=b"a=1&b=h%C3%A9llo+world&a=2&empty=&flag",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, resp
    assert json.loads(resp) == [["a", "1"], ["b", "héllo world"], ["a", "2"], ["empty", ""], ["flag", ""]]
    status, _, resp = h.get("/parse", method="POST", body=b"{}", headers={"Content-Type": "application/json"})
    assert status == 400 and resp.startswith(b"TypeError: formData(): the Content-Type is")
    status, _, resp = h.get("/parse", method="POST", body=b"--b\r\nno headers end",
                            headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert status == 400 and b"invalid multipart/form-data body" in resp


def test_form_data_parsing_is_bounded_by_max_body(heliosd, tmp_path):
    h = start_js(heliosd, tmp_path, SCRIPT, max_body="64KiB")
    body = multipart("b0undary", [("big", ("big.bin", "application/octet-stream", b"x" * 100_000))])
    status, _, resp = h.get("/parse", method="POST", body=body,
                            headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert status == 400 and b"over max_body (65536 bytes)" in resp


def test_form_data_as_a_fetch_body_is_multipart(heliosd, tmp_path, backends):
    a = backends("a")
    h = start_js(heliosd, tmp_path, SCRIPT, upstreams={"app": upstream_conf(a)})
    status, headers, body = h.get("/send")
    assert status == 200, body
    ctype = headers["content-type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    parts = [(p.get_param("name", header="content-disposition"), p.get_filename(), p.get_content_type(),
              p.get_payload(decode=True)) for p in msg.iter_parts()]
    assert parts == [
        ("title", None, "text/plain", 'Héllo "quoted"\r\nline'.encode()),
        ("doc", "report.bin", "application/x-test", b"file \x00\x01\xff end"),
        ("blob", "blob", "application/json", b'{"a":1}'),
        ("blob", "named.txt", "application/octet-stream", b"second"),
    ]


def test_form_data_blob_and_file_in_the_handler(heliosd, tmp_path):
    h = start_js(heliosd, tmp_path, SCRIPT)
    status, _, resp = h.get("/roundtrip")
    assert status == 200, resp
    got = json.loads(resp)
    sha = hashlib.sha256(b"contents").hexdigest()
    assert got["entries"] == [["a", "1"], ["a", "2"], ["b", "y"],
                              ["f", {"file": "c.txt", "type": "text/plain", "size": 8, "isFile": True, "sha256": sha}]]
    assert got["getAll"] == ["1", "2"] and got["has"] == [True, False]
    assert got["urlenc"] == [["q", "a b"], ["r", "é&"]]
    assert got["blob"] == [11, "text/plain", "world", "wor"]
    assert got["fileText"] == "contents" and got["fileTs"] == "number"
    assert got["cloned"] == "contents" and got["clonedName"] == "c.txt"
    assert got["respBlob"] == "hello world" and got["respType"] == "text/plain"
