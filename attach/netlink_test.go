package attach_test

import (
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tandem-dr/tandem/attach"
	"golang.org/x/sys/unix"
)

func TestAttrsRoundTrip(t *testing.T) {
	in := []attach.NLAttr{
		{Type: 1, Value: []byte{1, 2, 3}}, // padded to 8
		{Type: 2, Value: nil},
		{Type: 7, Value: attach.EncodeAttrs([]attach.NLAttr{{Type: 1, Value: []byte{9, 9, 9, 9}}})},
	}
	b := attach.EncodeAttrs(in)
	if got, want := len(b), 8+4+12; got != want {
		t.Fatalf("encoded length: got %d, want %d", got, want)
	}
	out, err := attach.ParseAttrs(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("attributes: got %d, want %d", len(out), len(in))
	}
	for i := range in {
		if out[i].Type != in[i].Type || !slices.Equal(out[i].Value, in[i].Value) && len(in[i].Value) > 0 {
			t.Errorf("attribute %d: got %+v, want %+v", i, out[i], in[i])
		}
	}
}

func TestNBDConnectAttrs(t *testing.T) {
	attrs := attach.NBDConnectAttrs(5, 3, 1<<30, 0x0003, attach.NBDOptions{BlockSize: 4096})
	b := attach.EncodeAttrs(attrs)
	parsed, err := attach.ParseAttrs(b)
	if err != nil {
		t.Fatal(err)
	}
	u64 := func(typ uint16) uint64 {
		for _, a := range parsed {
			if a.Type == typ {
				return binary.NativeEndian.Uint64(a.Value)
			}
		}
		t.Fatalf("attribute %d missing", typ)
		return 0
	}
	if got := u64(2); got != 1<<30 {
		t.Errorf("NBD_ATTR_SIZE_BYTES: got %d, want %d", got, 1<<30)
	}
	if got := u64(3); got != 4096 {
		t.Errorf("NBD_ATTR_BLOCK_SIZE_BYTES: got %d, want 4096", got)
	}
	if got := u64(5); got != 3 {
		t.Errorf("NBD_ATTR_SERVER_FLAGS: got %d, want 3", got)
	}
	// NBD_ATTR_SOCKETS > NBD_SOCK_ITEM > NBD_SOCK_FD = 5
	var fd uint32
	for _, a := range parsed {
		if a.Type != 7 {
			continue
		}
		items, err := attach.ParseAttrs(a.Value)
		if err != nil || len(items) != 1 || items[0].Type != 1 {
			t.Fatalf("sockets: got %+v, %v", items, err)
		}
		fds, err := attach.ParseAttrs(items[0].Value)
		if err != nil || len(fds) != 1 || fds[0].Type != 1 {
			t.Fatalf("socket item: got %+v, %v", fds, err)
		}
		fd = binary.NativeEndian.Uint32(fds[0].Value)
	}
	if fd != 5 {
		t.Errorf("NBD_SOCK_FD: got %d, want 5", fd)
	}
}

// reply builds one netlink message.
func reply(typ uint16, seq uint32, body []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(16+len(body)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = append(b, body...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func errBody(errno int32) []byte {
	return append(binary.NativeEndian.AppendUint32(nil, uint32(errno)), make([]byte, 16)...)
}

func TestParseReplies(t *testing.T) {
	famID := attach.EncodeAttrs([]attach.NLAttr{{Type: unix.CTRL_ATTR_FAMILY_ID, Value: []byte{0x22, 0}}})
	genl := append([]byte{1, 1, 0, 0}, famID...)
	for _, c := range []struct {
		name    string
		in      []byte
		errno   int
		acked   bool
		nattrs  int
		wantErr bool
	}{
		{"data then ack", append(reply(0x10, 7, genl), reply(unix.NLMSG_ERROR, 7, errBody(0))...), 0, true, 1, false},
		{"data only", reply(0x10, 7, genl), 0, false, 1, false},
		{"error", reply(unix.NLMSG_ERROR, 7, errBody(-int32(unix.ENOENT))), int(unix.ENOENT), true, 0, false},
		{"other sequence skipped", reply(unix.NLMSG_ERROR, 6, errBody(-1)), 0, false, 0, false},
		{"short header", []byte{1, 2, 3}, 0, false, 0, true},
		{"length past end", reply(0x10, 7, genl)[:20], 0, false, 0, true},
		{"short error", reply(unix.NLMSG_ERROR, 7, []byte{1}), 0, false, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			attrs, errno, acked, err := attach.ParseReplies(c.in, 7)
			if c.wantErr {
				if !errors.Is(err, attach.ErrBadNetlink) {
					t.Errorf("got %v, want ErrBadNetlink", err)
				}
				return
			}
			if err != nil || errno != c.errno || acked != c.acked || len(attrs) != c.nattrs {
				t.Errorf("got attrs %d, errno %d, acked %v, err %v; want %d, %d, %v, nil", len(attrs), errno, acked, err, c.nattrs, c.errno, c.acked)
			}
		})
	}
}

func FuzzParseReplies(f *testing.F) {
	famID := attach.EncodeAttrs([]attach.NLAttr{{Type: unix.CTRL_ATTR_FAMILY_ID, Value: []byte{0x22, 0}}})
	f.Add(reply(0x10, 1, append([]byte{1, 1, 0, 0}, famID...)))
	f.Add(reply(unix.NLMSG_ERROR, 1, errBody(-2)))
	f.Add(reply(unix.NLMSG_DONE, 1, nil))
	f.Add(attach.GenlMessage(0x10, 1, 1, 1, 1, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		attrs, _, _, err := attach.ParseReplies(b, 1)
		if err != nil {
			return
		}
		for _, a := range attrs {
			attach.ParseAttrs(a.Value) // nested: must not panic either
		}
	})
}

func FuzzParseAttrs(f *testing.F) {
	f.Add(attach.EncodeAttrs([]attach.NLAttr{{Type: 1, Value: []byte{1}}, {Type: 2}}))
	f.Add([]byte{4, 0, 1, 0})
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		attrs, err := attach.ParseAttrs(b)
		if err != nil {
			return
		}
		// What parses re-encodes to a prefix-equal stream of attributes.
		again, err := attach.ParseAttrs(attach.EncodeAttrs(attrs))
		if err != nil || len(again) != len(attrs) {
			t.Fatalf("re-parse: got %d attributes, %v; want %d", len(again), err, len(attrs))
		}
	})
}

func TestParseModulesDep(t *testing.T) {
	dep := []byte("kernel/fs/fuse/fuse.ko.zst:\n" +
		"kernel/drivers/block/nbd.ko.zst: kernel/lib/a.ko kernel/lib/b.ko.xz\n" +
		"kernel/drivers/block/nbdx.ko:\n")
	path, deps, ok := attach.ParseModulesDep(dep, "nbd")
	if !ok || path != "kernel/drivers/block/nbd.ko.zst" || !slices.Equal(deps, []string{"kernel/lib/a.ko", "kernel/lib/b.ko.xz"}) {
		t.Errorf("got %q, %q, %v; want the nbd line", path, deps, ok)
	}
	if _, _, ok := attach.ParseModulesDep(dep, "loop"); ok {
		t.Errorf("found loop in a modules.dep without it")
	}
}

func TestFindModule(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "modules.dep"), "kernel/drivers/block/nbd.ko.xz: kernel/lib/dep1.ko kernel/lib/dep2.ko\n")
	got, err := attach.FindModule(root, "nbd")
	want := []string{filepath.Join(root, "kernel/lib/dep2.ko"), filepath.Join(root, "kernel/lib/dep1.ko"), filepath.Join(root, "kernel/drivers/block/nbd.ko.xz")}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("with modules.dep: got %q, %v; want %q", got, err, want)
	}

	bare := t.TempDir()
	writeFile(t, filepath.Join(bare, "kernel/drivers/block/nbd.ko.zst"), "x")
	got, err = attach.FindModule(bare, "nbd")
	if want := []string{filepath.Join(bare, "kernel/drivers/block/nbd.ko.zst")}; err != nil || !slices.Equal(got, want) {
		t.Errorf("by walking: got %q, %v; want %q", got, err, want)
	}

	if _, err := attach.FindModule(filepath.Join(bare, "missing"), "nbd"); err == nil {
		t.Errorf("missing modules root: got nil error")
	}
}

func FuzzParseModulesDep(f *testing.F) {
	f.Add([]byte("kernel/drivers/block/nbd.ko.zst: kernel/lib/a.ko\n"), "nbd")
	f.Add([]byte(":\n::\n"), "nbd")
	f.Add([]byte("nbd.ko"), "nbd")
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		path, _, ok := attach.ParseModulesDep(data, name)
		if ok && filepath.Base(path) != name+".ko" && filepath.Base(path) != name+".ko.zst" &&
			filepath.Base(path) != name+".ko.xz" && filepath.Base(path) != name+".ko.gz" {
			t.Fatalf("found %q for module %q", path, name)
		}
	})
}

// TestResolveFamily talks to the kernel: the controller family resolves
// to its fixed id, a family that does not exist to ENOENT.
func TestResolveFamily(t *testing.T) {
	ctx := context.Background()
	id, err := attach.ResolveFamily(ctx, "nlctrl")
	if err != nil || id != unix.GENL_ID_CTRL {
		t.Errorf("resolve nlctrl: got %#x, %v; want %#x", id, err, unix.GENL_ID_CTRL)
	}
	if _, err := attach.ResolveFamily(ctx, "nosuchfamily"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("resolve a missing family: got %v, want ENOENT", err)
	}
}
