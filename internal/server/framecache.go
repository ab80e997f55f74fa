package server

import (
	"container/list"
	"sync"
)

// frameCache keeps the most recently used compressed ranges, at most max
// bytes of them, so that many nodes asking for the same run of the same
// revision (a fleet updating from one previous revision asks for identical
// ranges) cost one compression. Frames are immutable once cached.
type frameCache struct {
	mu    sync.Mutex
	max   int64
	bytes int64
	order *list.List // of *frameEntry, most recent first
	byKey map[string]*list.Element
}

type frameEntry struct {
	key   string
	frame []byte
}

func newFrameCache(max int64) *frameCache {
	return &frameCache{max: max, order: list.New(), byKey: map[string]*list.Element{}}
}

// get returns the frame cached under key, if any.
func (c *frameCache) get(key string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*frameEntry).frame, true
	}
	return nil, false
}

// put caches frame under key, evicting the least recently used frames to
// stay within max. A frame over a quarter of max is not kept.
func (c *frameCache) put(key string, frame []byte) {
	n := int64(len(frame))
	if n > c.max/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byKey[key]; ok {
		return
	}
	c.byKey[key] = c.order.PushFront(&frameEntry{key: key, frame: frame})
	c.bytes += n
	for c.bytes > c.max {
		last := c.order.Back()
		ent := last.Value.(*frameEntry)
		c.order.Remove(last)
		delete(c.byKey, ent.key)
		c.bytes -= int64(len(ent.frame))
	}
}
