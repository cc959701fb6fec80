# cmake -DIN=quickjs.c -DOUT=hx_quickjs.c -P quickjs_patch.cmake
#
# Two changes to QuickJS 2021-03-27 so that errors read the way Workers
# (V8) code expects; each anchor must match exactly once, or the build stops
# (a new QuickJS needs this file reviewed):
#   1. `err.stack` starts with the "Name: message" line (V8's format), so
#      code that logs or returns err.stack shows the message;
#   2. calling a missing method (`obj.nope()`) throws "nope is not a
#      function" instead of a bare "not a function": OP_get_field2 (the
#      property read of a method call) remembers the stack slot and name it
#      filled, and OP_call_method names it when that slot is not callable.
file(READ "${IN}" src)

function(hx_patch anchor replacement)
  string(FIND "${src}" "${anchor}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "quickjs_patch.cmake: anchor not found in ${IN}:\n${anchor}")
  endif()
  string(LENGTH "${anchor}" alen)
  math(EXPR rest "${at} + ${alen}")
  string(SUBSTRING "${src}" ${rest} -1 tail)
  string(FIND "${tail}" "${anchor}" again)
  if(NOT again EQUAL -1)
    message(FATAL_ERROR "quickjs_patch.cmake: anchor found twice in ${IN}:\n${anchor}")
  endif()
  string(REPLACE "${anchor}" "${replacement}" out "${src}")
  set(src "${out}" PARENT_SCOPE)
endfunction()

# ---- 2: where the last method read put its value ----
hx_patch([==[struct JSRuntime {
    JSMallocFunctions mf;
]==] [==[struct JSRuntime {
    JSMallocFunctions mf;
    JSValue *hx_callee_slot; /* helios: stack slot OP_get_field2 filled last */
    JSAtom hx_callee_atom;   /* helios: and the property name it read */
]==])

hx_patch([==[                val = JS_GetProperty(ctx, sp[-1], atom);
                if (unlikely(JS_IsException(val)))
                    goto exception;
                *sp++ = val;]==] [==[                val = JS_GetProperty(ctx, sp[-1], atom);
                if (unlikely(JS_IsException(val)))
                    goto exception;
                rt->hx_callee_slot = sp;
                rt->hx_callee_atom = atom;
                *sp++ = val;]==])

hx_patch([==[                call_argv = sp - call_argc;
                sf->cur_pc = pc;
                ret_val = JS_CallInternal(ctx, call_argv[-1], call_argv[-2],
                                          JS_UNDEFINED, call_argc, call_argv, 0);]==]
         [==[                call_argv = sp - call_argc;
                sf->cur_pc = pc;
                if (unlikely(rt->hx_callee_slot == &call_argv[-1] &&
                             !JS_IsFunction(ctx, call_argv[-1]))) {
                    hx_throw_not_a_function(ctx, rt->hx_callee_atom, call_argv[-1]);
                    goto exception;
                }
                ret_val = JS_CallInternal(ctx, call_argv[-1], call_argv[-2],
                                          JS_UNDEFINED, call_argc, call_argv, 0);]==])

# ---- 1 and 2: helpers, placed before build_backtrace ----
hx_patch([==[/* if filename != NULL, an additional level is added with the filename]==]
         [==[/* helios: a data property of P or its prototypes, never a getter
   (building a backtrace must not run JS nor throw) */
static JSValue hx_data_prop(JSContext *ctx, JSObject *p, JSAtom atom, BOOL own)
{
    for (; p != NULL; p = own ? NULL : p->shape->proto) {
        JSProperty *pr;
        JSShapeProperty *prs = find_own_property(&pr, p, atom);
        if (prs) {
            if ((prs->flags & JS_PROP_TMASK) == JS_PROP_NORMAL &&
                JS_VALUE_GET_TAG(pr->u.value) == JS_TAG_STRING)
                return JS_DupValue(ctx, pr->u.value);
            return JS_UNDEFINED;
        }
    }
    return JS_UNDEFINED;
}

/* helios: "Name: message\n", the first line of a V8 stack */
static void hx_backtrace_header(JSContext *ctx, JSValueConst error_obj, DynBuf *dbuf)
{
    if (JS_VALUE_GET_TAG(error_obj) != JS_TAG_OBJECT)
        return;
    JSObject *p = JS_VALUE_GET_OBJ(error_obj);
    JSValue name = hx_data_prop(ctx, p, JS_ATOM_name, FALSE);
    JSValue msg = hx_data_prop(ctx, p, JS_ATOM_message, FALSE);
    const char *n = JS_IsString(name) ? JS_ToCString(ctx, name) : NULL;
    const char *m = JS_IsString(msg) ? JS_ToCString(ctx, msg) : NULL;
    dbuf_putstr(dbuf, n ? n : "Error");
    if (m && m[0]) {
        dbuf_putstr(dbuf, ": ");
        dbuf_putstr(dbuf, m);
    }
    dbuf_putc(dbuf, '\n');
    JS_FreeCString(ctx, n);
    JS_FreeCString(ctx, m);
    JS_FreeValue(ctx, name);
    JS_FreeValue(ctx, msg);
}

/* helios: the TypeError of a method call whose property is not callable */
static void hx_throw_not_a_function(JSContext *ctx, JSAtom atom, JSValueConst v)
{
    char buf[ATOM_GET_STR_BUF_SIZE];
    const char *what;
    switch (JS_VALUE_GET_TAG(v)) {
    case JS_TAG_UNDEFINED: what = "undefined"; break;
    case JS_TAG_NULL: what = "null"; break;
    case JS_TAG_STRING: what = "a string"; break;
    case JS_TAG_BOOL: what = "a boolean"; break;
    case JS_TAG_OBJECT: what = "an object"; break;
    case JS_TAG_SYMBOL: what = "a symbol"; break;
    default: what = "a number"; break;
    }
    JS_ThrowTypeError(ctx, "%s is not a function (it is %s)",
                      JS_AtomGetStr(ctx, buf, sizeof(buf), atom), what);
}

/* if filename != NULL, an additional level is added with the filename]==])

hx_patch([==[    js_dbuf_init(ctx, &dbuf);
    if (filename) {
        dbuf_printf(&dbuf, "    at %s", filename);]==]
         [==[    js_dbuf_init(ctx, &dbuf);
    hx_backtrace_header(ctx, error_obj, &dbuf);
    if (filename) {
        dbuf_printf(&dbuf, "    at %s", filename);]==])

file(WRITE "${OUT}.tmp" "/* generated from QuickJS's quickjs.c by modules/js/quickjs_patch.cmake */\n${src}")
file(RENAME "${OUT}.tmp" "${OUT}")
