#!/usr/bin/env python3
"""corfs's documentation generator: doc/commands and doc/config (formats
described atop each) into

  --header FILE    the C header of every --help text (CORFS_HELP_MAIN,
                   CORFS_HELP_<COMMAND>) and CORFS_HELP_CHECKS, the
                   static assertions of the {NAME=VALUE} constants
  --man1 FILE      the man page corfs(1)
  --man5 FILE      the man page corfs.conf(5)
  --readme FILE    check that FILE's command table is the generated one
                   (exit 1 on drift); with --update, rewrite it
  --options        print each command's options as JSON (doc/check-options)
  --keys           print each config section's keys as JSON

Run by scons; python3 only, no module beyond the standard library.
"""
import json
import re
import sys
import textwrap

WIDTH = 79          # --help lines are at most this long
OPT_COL = 25        # where an option's description starts in --help
README_BEGIN = '<!-- command table: generated from doc/commands by doc/gen.py -->'
README_END = '<!-- end of the command table -->'


class Option:
    """An option (from its spec), a config key or an exit code (names and
    arg given), with its description."""
    def __init__(self, spec, names=None, arg=None):
        self.spec = spec
        self.names = names or []    # ['-f', '--foreground']
        self.arg = arg              # 'DIR', or None for a flag
        self.default = None         # config keys
        self.desc = []              # ('p', text, ended) or ('v', line)
        for part in spec.split(', ') if names is None else []:
            m = re.match(r'^(--?[A-Za-z0-9-]+)(?:[ =](.+))?$', part)
            if not m:
                raise SystemExit('doc: bad option spec %r' % spec)
            self.names.append(m.group(1))
            if m.group(2):
                self.arg = m.group(2)


class Block:
    def __init__(self, name):
        self.name = name
        self.usage = []
        self.summary = ''
        self.before = []        # items before the options
        self.options = []
        self.after = []         # items after the options
        self.keys = []          # config: Option-like entries with .default


def constants(text, found):
    """{NAME=VALUE} into VALUE, recording (NAME, VALUE) in found."""
    def sub(m):
        found.append((m.group(1), m.group(2)))
        return m.group(2)
    return re.sub(r'\{([A-Z_][A-Z0-9_]*)=([^}]*)\}', sub, text)


def add_text(items, line):
    """A line of text at column 0 (or of a description) into items."""
    if line.startswith('> ') or line == '>':
        items.append(('v', line[2:]))
    elif items and items[-1][0] == 'p' and not items[-1][2]:
        items[-1] = ('p', items[-1][1] + ' ' + line, False)
    else:
        items.append(('p', line, False))


def end_paragraph(items):
    if items and items[-1][0] == 'p':
        items[-1] = ('p', items[-1][1], True)


def parse(path, found):
    blocks, b, cur = [], None, None
    for raw in open(path, encoding='utf-8'):
        if raw.startswith('#'):
            continue
        line = constants(raw.rstrip('\n'), found)
        m = re.match(r'^\[(.+)\]$', line)
        if m:
            b, cur = Block(m.group(1)), None
            blocks.append(b)
            continue
        if b is None:
            if line.strip():
                raise SystemExit('%s: text before the first [section]' % path)
            continue
        if not line.strip():
            # Ends a paragraph; an option's description may go on after it.
            end_paragraph(cur.desc if cur else (b.after if b.options or b.keys else b.before))
            continue
        if line.startswith('usage: '):
            b.usage.append(line[7:])
        elif line.startswith('summary: '):
            b.summary = line[9:]
        elif line.startswith('-'):
            cur = Option(line)
            b.options.append(cur)
        elif re.match(r'^[a-z0-9-]+ = \S', line):
            key, value = line.split(' = ', 1)
            cur = Option(line, [key], value)
            b.keys.append(cur)
        elif re.match(r'^[0-9]+$', line) and b.name == 'exit':
            cur = Option(line, [line])
            b.options.append(cur)
        elif line.startswith('  ') and cur is not None:
            text = line[2:]
            if text.startswith('default: ') and b.keys and cur is b.keys[-1] and not cur.desc:
                cur.default = text[9:]
            else:
                add_text(cur.desc, text)
        else:
            cur = None
            add_text(b.after if b.options or b.keys else b.before, line)
    return blocks


# ---- --help ----

def help_items(items, indent):
    out = []
    for it in items:
        if it[0] == 'v':
            out.append((' ' * indent + it[1]).rstrip())
        else:
            out += [' ' * indent + l for l in textwrap.wrap(
                it[1], WIDTH - indent, break_on_hyphens=False, break_long_words=False)]
    return out


def help_paragraphs(items):
    out = []
    for it in items:
        if it[0] == 'p':
            out += textwrap.wrap(it[1], WIDTH, break_on_hyphens=False, break_long_words=False)
            if it[2]:
                out.append('')
        else:
            out.append(it[1])
    return out


def option_help(o):
    spec = '  ' + o.spec
    desc = help_items(o.desc, OPT_COL)
    if not desc:
        return [spec]
    if len(spec) <= OPT_COL - 2:
        return [spec.ljust(OPT_COL) + desc[0][OPT_COL:]] + desc[1:]
    return [spec] + desc


def usage_lines(b):
    out = []
    for i, u in enumerate(b.usage):
        head = 'Usage: ' if i == 0 else '       '
        words, line = u.split(' '), head
        cont = ' ' * (len(head) + len('corfs %s ' % b.name))
        for w in words:
            if len(line) + len(w) + 1 > WIDTH and line.strip():
                out.append(line.rstrip())
                line = cont
            line += w + ' '
        out.append(line.rstrip())
    return out


def command_help(b):
    lines = usage_lines(b) + ['']
    lines += help_paragraphs(b.before)
    if lines[-1] != '':
        lines.append('')
    for o in b.options:
        lines += option_help(o)
    if b.after:
        lines.append('')
        lines += help_paragraphs(b.after)
    while lines[-1] == '':
        lines.pop()
    return lines


def main_help(main, commands):
    lines = usage_lines(main) + [''] + help_paragraphs(main.before)
    if lines[-1] != '':
        lines.append('')
    lines.append('Commands:')
    for c in commands:
        lines.append('  ' + c.name.ljust(OPT_COL - 3) +
                     textwrap.wrap(c.summary, WIDTH - OPT_COL)[0])
        lines += [' ' * OPT_COL + l for l in textwrap.wrap(c.summary, WIDTH - OPT_COL)[1:]]
    lines += ['', 'Run `corfs COMMAND --help` for a command\'s options, `man corfs` for more.']
    return lines


def c_string(lines):
    out = []
    for l in lines:
        s = (l + '\n').replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')
        out.append('  "%s"' % s)
    return ' \\\n'.join(out)


def header(blocks, found):
    main = next(b for b in blocks if b.name == 'corfs')
    commands = [b for b in blocks if b.usage and b.name != 'corfs']
    out = ['/* Generated by doc/gen.py from doc/commands: do not edit. */',
           '#ifndef CORFS_HELP_H', '#define CORFS_HELP_H', '']
    for b in [main] + commands:
        lines = main_help(main, commands) if b is main else command_help(b)
        for l in lines:
            if len(l) > WIDTH:
                raise SystemExit('doc: --help of %s: line over %d columns: %r'
                                 % (b.name, WIDTH, l))
        name = 'MAIN' if b is main else b.name.upper().replace('-', '_')
        out += ['#define CORFS_HELP_%s \\' % name, c_string(lines), '']
    checks = ['_Static_assert (%s == %s, "doc/commands says %s is %s")' % (n, v, n, v)
              for n, v in sorted(set(found))]
    out += ['/* At file scope in a file that sees the constants. */',
            '#define CORFS_HELP_CHECKS \\',
            ' \\\n'.join('  ' + c + ';' for c in checks) or '  /* none */', '',
            '#endif', '']
    return '\n'.join(out)


# ---- man pages ----

def roff_escape(s):
    s = s.replace('\\', '\\e')
    s = re.sub(r'(?<![\w-])(--?)(?=[A-Za-z0-9])', lambda m: '\\-' * len(m.group(1)), s)
    return s


def roff_text(s):
    s = roff_escape(s)
    s = re.sub(r'`([^`]+)`', r'\\fB\1\\fR', s)
    if s.startswith('.') or s.startswith("'"):
        s = '\\&' + s
    return s


def roff_items(items):
    out, verbatim = [], False
    for it in items:
        if it[0] == 'v':
            if not verbatim:
                out.append('.nf')
                verbatim = True
            out.append(roff_text(it[1]) if it[1] else '')
        else:
            if verbatim:
                out.append('.fi')
                verbatim = False
            if out:
                out.append('.PP')
            out.append(roff_text(it[1]))
    if verbatim:
        out.append('.fi')
    return out


def roff_option(o):
    spec = ', '.join('\\fB%s\\fR' % roff_escape(n) for n in o.names)
    if o.arg:
        sep = '=' if ('=' + o.arg) in o.spec else ' '
        spec += sep + '\\fI%s\\fR' % roff_escape(o.arg)
    body = roff_items(o.desc)
    body = [l if l != '.PP' else '.IP' for l in body]
    return ['.TP', spec] + body


def man1(blocks, date):
    main = next(b for b in blocks if b.name == 'corfs')
    commands = [b for b in blocks if b.usage and b.name != 'corfs']
    byname = {b.name: b for b in blocks}
    out = ['.\\" Generated by doc/gen.py from doc/commands: do not edit.',
           '.TH CORFS 1 "%s" "corfs" "User Commands"' % date, '.nh',
           '.SH NAME', 'corfs \\- copy-on-read FUSE file system for VM disks',
           '.SH SYNOPSIS']
    for c in commands:
        for u in c.usage:
            out += ['.PP', '\\fB%s\\fR' % roff_escape(u)]
    out += ['.SH DESCRIPTION'] + roff_items(main.before)
    out += ['.SH COMMANDS']
    for c in commands:
        out += ['.SS %s' % c.name]
        for u in c.usage:
            out += ['.PP', '\\fB%s\\fR' % roff_escape(u)]
        out += ['.PP'] + roff_items(c.before)
        for o in c.options:
            out += roff_option(o)
        if c.after:
            out += ['.PP'] + roff_items(c.after)
    out += ['.SH "EXIT STATUS"']
    for o in byname['exit'].options:
        out += ['.TP', '\\fB%s\\fR' % o.names[0]] + roff_items(o.desc)
    out += ['.SH EXAMPLES'] + examples(byname['examples'].before)
    out += ['.SH FILES', '.TP', '\\fIDIR\\fR/corfs.sock',
            'the control socket of the daemon of the state directory \\fIDIR\\fR',
            '.TP', '\\fIDIR\\fR/corfs.log', 'the daemon\'s log',
            '.SH "SEE ALSO"', '\\fBcorfs.conf\\fR(5), \\fBfusermount3\\fR(1), '
            'docs/control.md (the control socket and the status fields)', '']
    return '\n'.join(out)


def examples(items):
    """Paragraphs, each followed by its commands, indented and kept."""
    out, verbatim = [], False
    for it in items:
        if it[0] == 'p':
            if verbatim:
                out += ['.fi', '.RE']
                verbatim = False
            out += ['.PP', roff_text(it[1])]
        else:
            if not verbatim:
                out += ['.RS 4', '.nf']
                verbatim = True
            out.append(roff_text(it[1]))
    if verbatim:
        out += ['.fi', '.RE']
    return out


def man5(blocks, date):
    byname = {b.name: b for b in blocks}
    out = ['.\\" Generated by doc/gen.py from doc/config: do not edit.',
           '.TH CORFS.CONF 5 "%s" "corfs" "File Formats"' % date, '.nh',
           '.SH NAME', 'corfs.conf \\- corfs configuration file',
           '.SH DESCRIPTION'] + roff_items(byname['intro'].before)
    for b in blocks:
        if not b.keys:
            continue
        out += ['.SH "SECTION [%s]"' % b.name] + roff_items(b.before)
        for k in b.keys:
            out += ['.TP', '\\fB%s\\fR = \\fI%s\\fR' % (roff_escape(k.names[0]),
                                                       roff_escape(k.arg))]
            out += [l if l != '.PP' else '.IP' for l in roff_items(k.desc)]
            if k.default:
                out += ['.IP', 'Default: %s.' % roff_text(k.default)]
    out += ['.SH EXAMPLE', '.PP', '.RS 4', '.nf']
    out += [roff_text(it[1]) if it[1] else '' for it in byname['example'].before]
    out += ['.fi', '.RE', '.SH FILES'] + roff_items(byname['files'].before)
    out += ['.SH "SEE ALSO"', '\\fBcorfs\\fR(1)', '']
    return '\n'.join(out)


# ---- README.md's command table ----

def readme_table(blocks):
    rows = ['| command | what it does |', '|---|---|']
    for c in blocks:
        if c.usage and c.name != 'corfs':
            rows.append('| `%s` | %s |' % (c.usage[0].replace('|', '\\|'), c.summary))
    return rows


def readme(path, blocks, update):
    text = open(path, encoding='utf-8').read()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit('%s: no "%s" ... "%s" around the command table'
                         % (path, README_BEGIN, README_END))
    head, rest = text.split(README_BEGIN, 1)
    table, tail = rest.split(README_END, 1)
    want = '\n' + '\n'.join(readme_table(blocks)) + '\n'
    if table == want:
        return 0
    if update:
        open(path, 'w', encoding='utf-8').write(head + README_BEGIN + want + README_END + tail)
        return 0
    sys.stderr.write('%s: the command table differs from doc/commands; run '
                     'python3 doc/gen.py --readme %s --update\n' % (path, path))
    return 1


def options_json(blocks):
    return {c.name: [{'names': o.names, 'arg': o.arg} for o in c.options]
            for c in blocks if c.usage and c.name != 'corfs'}


def main(argv):
    import argparse
    import os
    p = argparse.ArgumentParser(description='corfs documentation generator')
    p.add_argument('--commands', default=os.path.join(os.path.dirname(__file__), 'commands'))
    p.add_argument('--config', default=os.path.join(os.path.dirname(__file__), 'config'))
    p.add_argument('--header')
    p.add_argument('--man1')
    p.add_argument('--man5')
    p.add_argument('--readme')
    p.add_argument('--update', action='store_true')
    p.add_argument('--options', action='store_true')
    p.add_argument('--keys', action='store_true')
    a = p.parse_args(argv)
    found = []
    cmds = parse(a.commands, found)
    conf = parse(a.config, [])
    # The date of the sources (or SOURCE_DATE_EPOCH), not of the build.
    import time
    when = os.environ.get('SOURCE_DATE_EPOCH') or max(os.path.getmtime(a.commands),
                                                      os.path.getmtime(a.config))
    date = time.strftime('%Y-%m-%d', time.gmtime(float(when)))
    if a.header:
        open(a.header, 'w').write(header(cmds, found))
    if a.man1:
        open(a.man1, 'w').write(man1(cmds, date))
    if a.man5:
        open(a.man5, 'w').write(man5(conf, date))
    if a.options:
        print(json.dumps(options_json(cmds), indent=1))
    if a.keys:
        print(json.dumps({b.name: [k.names[0] for k in b.keys] for b in conf if b.keys},
                         indent=1))
    if a.readme:
        return readme(a.readme, cmds, a.update)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
