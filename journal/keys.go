package journal

import "encoding/binary"

// Key layout (see doc.go). Every key starts with a one-byte space tag.
const (
	tagName = 'n' // n <name>                      -> log id (uint32)
	tagNext = 'i' // i                             -> next log id (uint32)
	tagLog  = 'l' // l <id:4> <sub> ...            -> per-log keys below

	subBase   = 'b' // l <id> b                    -> released seq:8, its sum:8
	subHold   = 'h' // l <id> h <consumer>         -> seq:8
	subMeta   = 'm' // l <id> m <key>              -> value
	subSynced = 'w' // l <id> w                    -> seq:8 up to which segments were synced
	subIndex  = 'x' // l <id> x <region:8> <seq:8> -> reserved: block index
)

func nameKey(name string) []byte { return append([]byte{tagName}, name...) }

func nextIDKey() []byte { return []byte{tagNext} }

func logPrefix(id uint32) []byte {
	k := make([]byte, 5, 16)
	k[0] = tagLog
	binary.BigEndian.PutUint32(k[1:], id)
	return k
}

func subKey(id uint32, sub byte, rest []byte) []byte {
	k := append(logPrefix(id), sub)
	return append(k, rest...)
}

func baseKey(id uint32) []byte { return subKey(id, subBase, nil) }

func syncedKey(id uint32) []byte { return subKey(id, subSynced, nil) }

func holdKey(id uint32, consumer string) []byte {
	return subKey(id, subHold, []byte(consumer))
}

func metaKey(id uint32, key string) []byte { return subKey(id, subMeta, []byte(key)) }

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}
