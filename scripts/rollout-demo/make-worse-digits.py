#!/usr/bin/env python3
"""Makes a deliberately worse digits model for the rollout example (docs/operations.md): the last layer's bias of
one class raised by BOOST, in place (same byte length), so that the model predicts that class for almost every
input. Usage: make-worse-digits.py IN.onnx OUT.onnx CLASS [BOOST]; with only IN, lists the initializers."""
import sys, struct
def varint(b, i):
    r = s = 0
    while True:
        c = b[i]; i += 1; r |= (c & 0x7f) << s; s += 7
        if c < 0x80: return r, i
def fields(b, start, end):
    i = start
    while i < end:
        key, i = varint(b, i); f, wt = key >> 3, key & 7
        if wt == 0: v, i = varint(b, i); yield f, wt, v, None
        elif wt == 1: yield f, wt, b[i:i+8], (i, i+8); i += 8
        elif wt == 5: yield f, wt, b[i:i+4], (i, i+4); i += 4
        elif wt == 2:
            n, i = varint(b, i); yield f, wt, (i, i+n), (i, i+n); i += n
        else: raise SystemExit("wire type %d" % wt)
b = bytearray(open(sys.argv[1], 'rb').read())
inits = []
for f, wt, v, _ in fields(b, 0, len(b)):
    if f == 7 and wt == 2:
        for g, gwt, gv, _ in fields(b, *v):
            if g == 5 and gwt == 2:
                dims = []; name = None; raw = None; fl = None
                for t, twt, tv, span in fields(b, *gv):
                    if t == 1: dims.append(tv) if twt == 0 else None
                    if t == 1 and twt == 2:  # packed dims
                        j = tv[0]
                        while j < tv[1]: d, j = varint(b, j); dims.append(d)
                    if t == 8: name = bytes(b[tv[0]:tv[1]]).decode()
                    if t == 9: raw = tv
                    if t == 4 and twt == 2: fl = tv
                inits.append((name, dims, raw, fl))
for name, dims, raw, fl in inits: print(name, dims, 'raw' if raw else '', 'float_data' if fl else '')
if len(sys.argv) > 3:
    # argv: in out class: give every row a +bias of 50 toward `class` in the last 10-wide bias (in place, same length)
    out, cls = sys.argv[2], int(sys.argv[3]); boost = float(sys.argv[4]) if len(sys.argv) > 4 else 50.0
    bias = [x for x in inits if x[1] in ([10], [1, 10]) and x[0] != "classes"][-1]
    span = bias[2] or bias[3]
    vals = list(struct.unpack('<10f', bytes(b[span[0]:span[1]])))
    vals[cls] += boost
    b[span[0]:span[1]] = struct.pack('<10f', *vals)
    open(out, 'wb').write(b); print('wrote', out, 'bias', bias[0])
