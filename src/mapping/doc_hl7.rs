//! The HL7 v2 side of evaluation: paths over a parsed message, `for_each` groups, and locations that become
//! ERR-2 (segment, occurrence, field, repetition, component).
//!
//! Paths resolve against a *scope*: the message (or the current `for_each` group), a segment (`each: OBX[*]`) or
//! a value (`each: PID.3[*]`, `as: CX`). Every selected value carries its location, so that a missing required
//! value, a bad date or an unknown code becomes an error pointing at segment, occurrence, field, repetition and
//! component — also when the value is absent and only the path says where it should have been. Mapping a
//! message first reads it through [`Unlocated`], which keeps no locations; only a message whose mapping
//! fails, and `explain`, read it through [`Hl7Doc`] with them.
//!
//! A value used as text is its first component's first subcomponent, decoded: HL7 lets a field grow components
//! across versions (PV1-2 is IS in 2.5 and CWE in 2.7), and reading the first component keeps a mapping written
//! for one version working for the other. Empty values and HL7's null `""` are absent.

use std::borrow::Cow;
use std::cell::RefCell;
use std::num::NonZeroU32;

use crate::hl7::{Index, Level, Location, Message, Path, Segment, Value};

use super::ast::PathRef;
use super::eval::{Doc, Sink};

/// Where a value is (or would be). Segment IDs are always three ASCII characters, so the location is `Copy` and
/// costs no allocation until an error or an explanation needs it as text. The numbers are `u32` (the 1-based
/// ones non-zero, so that their `Option` takes no room): every selected value carries its location through
/// several calls, and at 28 bytes instead of 80 the copies cost noticeably less; no frame holds 4 billion of
/// anything (larger numbers would saturate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    id: [u8; 3],
    occurrence: u32,
    /// 1-based among all segments; 0 when the segment is not in the message.
    position: u32,
    field: Option<NonZeroU32>,
    rep: Option<NonZeroU32>,
    comp: Option<NonZeroU32>,
    sub: Option<NonZeroU32>,
}

/// Field, repetition, component and subcomponent numbers are 1-based (paths refuse 0), so `None` costs no
/// room: a location is 28 bytes instead of 44.
const ONE: NonZeroU32 = NonZeroU32::MIN;

/// A 1-based number as stored in a [`Loc`] (saturating, as [`n32`]).
fn nz(n: usize) -> NonZeroU32 {
    NonZeroU32::new(n32(n)).unwrap_or(ONE)
}

fn widez(n: NonZeroU32) -> usize {
    wide(n.get())
}

/// A position or count as stored in a [`Loc`].
fn n32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A [`Loc`] number as the HL7 module's [`Location`] holds it.
fn wide(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Loc {
    fn segment(id: &str, occurrence: usize, position: usize) -> Loc {
        let b = id.as_bytes();
        let mut arr = [b'?'; 3];
        for (i, c) in b.iter().take(3).enumerate() {
            arr[i] = *c;
        }
        Loc {
            id: arr,
            occurrence: n32(occurrence),
            position: n32(position),
            field: None,
            rep: None,
            comp: None,
            sub: None,
        }
    }

    fn id(&self) -> &str {
        std::str::from_utf8(&self.id).unwrap_or("???")
    }

    /// As the HL7 module's location; a component always comes with its repetition (1 when none was named), so
    /// that both ERL writers agree (`PID^1^3^1^1`).
    pub fn location(&self) -> Location {
        Location {
            segment: self.id().to_string(),
            occurrence: wide(self.occurrence),
            position: wide(self.position),
            field: self.field.map(widez),
            repetition: self.rep.or(self.comp.map(|_| ONE)).map(widez),
            component: self.comp.map(widez),
            subcomponent: self.sub.map(widez),
        }
    }

    /// The path syntax of mapping files, indexes shown only when not 1: `PID.3[2].1`, `OBX[2].5`.
    pub fn path(&self) -> String {
        let mut s = self.id().to_string();
        if self.occurrence > 1 {
            s.push_str(&format!("[{}]", self.occurrence));
        }
        if let Some(f) = self.field {
            s.push_str(&format!(".{f}"));
            if let Some(r) = self.rep.filter(|r| r.get() > 1) {
                s.push_str(&format!("[{r}]"));
            }
            if let Some(c) = self.comp {
                s.push_str(&format!(".{c}"));
                if let Some(x) = self.sub {
                    s.push_str(&format!(".{x}"));
                }
            }
        }
        s
    }

    /// One level down from a value at `level`.
    fn down(mut self, level: Level, n: usize) -> Loc {
        let n = nz(n);
        match level {
            Level::Field => {
                self.rep = self.rep.or(Some(ONE));
                self.comp = Some(n);
            }
            Level::Repetition => self.comp = Some(n),
            Level::Component => self.sub = Some(n),
            Level::Leaf => {}
        }
        self
    }
}

/// What [`Hl7Doc::first_hl7`] keeps on its way down to a value: its location, or nothing (`()`) when
/// nobody will ask for it (a plain rule's text, a condition's test).
trait Track: Copy {
    fn segment(doc: &Hl7Doc<'_, '_>, idx: usize) -> Self;
    fn field(self, n: usize) -> Self;
    fn rep(self, r: usize) -> Self;
    fn down(self, level: Level, n: usize) -> Self;
}

impl Track for Loc {
    fn segment(doc: &Hl7Doc<'_, '_>, idx: usize) -> Loc {
        doc.seg_loc(idx)
    }
    fn field(mut self, n: usize) -> Loc {
        self.field = Some(nz(n));
        self
    }
    fn rep(mut self, r: usize) -> Loc {
        self.rep = Some(nz(r));
        self
    }
    fn down(self, level: Level, n: usize) -> Loc {
        Loc::down(self, level, n)
    }
}

impl Track for () {
    fn segment(_: &Hl7Doc<'_, '_>, _: usize) {}
    fn field(self, _: usize) {}
    fn rep(self, _: usize) {}
    fn down(self, _: Level, _: usize) {}
}

/// What a path selected: a whole segment or a value inside one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Item<'a> {
    Seg(usize),
    Val(Value<'a>),
}

type Scope<'a> = Option<(Item<'a>, Loc)>;

/// A parsed message as the evaluator reads it.
pub(crate) struct Hl7Doc<'m, 'a> {
    segs: Vec<Segment<'m, 'a>>,
    /// `segs`' IDs as numbers ([`id_code`]): paths look segments up by ID all the time, and comparing one
    /// number costs less than comparing `&str`s through `memcmp` (or three bytes one by one).
    ids: Vec<u32>,
    /// Each segment's location: every absolute path starts from one.
    locs: Vec<Loc>,
    /// The current `for_each` group as a half-open range of segment indexes.
    group: Option<(usize, usize)>,
    /// Segment IDs that resolve inside the group (those found from the first group on).
    group_ids: Vec<u32>,
    /// The `for_each` list the groups were last found for, and those groups: the order files of one
    /// message (five for ORM^O01) share `[ORC, OBR]`, and finding the groups once per file was 8 % of
    /// mapping an order. `group_ids` belongs to the same list. The list is kept as ID numbers
    /// ([`id_code`]), which compare without `memcmp`.
    groups_for: Vec<Option<u32>>,
    groups: Vec<(usize, usize)>,
    /// The components of the field or repetition split last (see [`Components`]).
    split: RefCell<Components>,
}

/// Where the components of one field (its first repetition) or repetition end, so that the rules of a datatype
/// (`.1`, `.4.1`, `.5`, `.6.1`, …), which all read the same value one after the other, find each component
/// without scanning the value from its start again: `Value::component` does, and that was the largest
/// single cost of mapping a message. Only the last value split is kept, which is the one a datatype's
/// rules keep asking for.
struct Components {
    /// The value split: where its text is and how long (the text itself is borrowed from the message, so
    /// the same place and length mean the same text), and its level. `usize::MAX` before the first split.
    at: (usize, usize, Level),
    /// How many components the value has, when at most [`MAX_COMPONENTS`]; `None` when more.
    count: Option<usize>,
    /// The end of each component in the value's text (it starts one past the previous end).
    ends: [usize; MAX_COMPONENTS],
}

/// More components than datatypes read (XTN-12, CWE-9) are looked up the slow way.
const MAX_COMPONENTS: usize = 16;

impl Components {
    fn new() -> Self {
        Components {
            at: (usize::MAX, 0, Level::Leaf),
            count: None,
            ends: [0; MAX_COMPONENTS],
        }
    }

    /// Component `n` (1-based) of a field or repetition, as `v.component(n)` gives it.
    fn component<'a>(&mut self, v: Value<'a>, n: usize) -> Option<Value<'a>> {
        let level = v.level();
        if !matches!(level, Level::Field | Level::Repetition) || n == 0 {
            return v.component(n);
        }
        let raw = v.raw();
        let at = (raw.as_ptr() as usize, raw.len(), level);
        if self.at != at {
            self.split(raw, level, v.separators());
            self.at = at;
        }
        let count = self.count.unwrap_or(MAX_COMPONENTS);
        if n > count {
            return if self.count.is_some() {
                None
            } else {
                v.component(n)
            };
        }
        let start = if n == 1 { 0 } else { self.ends[n - 2] + 1 };
        // The ends fall before ASCII separators, so the slice is on character boundaries.
        let text = raw.get(start..self.ends[n - 1]).unwrap_or("");
        Some(Value::new(text, v.separators(), Level::Component))
    }

    /// A field's components are those of its first repetition.
    fn split(&mut self, raw: &str, level: Level, seps: crate::hl7::Separators) {
        let bytes = raw.as_bytes();
        let end = match level {
            Level::Field => bytes
                .iter()
                .position(|&b| b == seps.repetition)
                .unwrap_or(bytes.len()),
            _ => bytes.len(),
        };
        let mut count = 0;
        for (i, &b) in bytes[..end].iter().enumerate() {
            if b == seps.component {
                if count == MAX_COMPONENTS {
                    self.count = None;
                    return;
                }
                self.ends[count] = i;
                count += 1;
            }
        }
        if count == MAX_COMPONENTS {
            self.count = None;
            return;
        }
        self.ends[count] = end;
        self.count = Some(count + 1);
    }
}

/// A segment ID as a number (its three bytes); `None` when it is not three bytes long (and so matches
/// no segment). No ID is 0.
fn id_code(id: &str) -> Option<u32> {
    match id.as_bytes() {
        &[a, b, c] => Some(u32::from_le_bytes([a, b, c, 1])),
        _ => None,
    }
}

fn is_blank(v: &Value<'_>) -> bool {
    let s = v.separators();
    v.is_null()
        || v.raw()
            .bytes()
            .all(|b| b == s.component || b == s.subcomponent || b == s.repetition)
}

/// The text of a value: first repetition, component and subcomponent, decoded; `None` when empty or null.
/// Borrowed from the message unless it has escapes: most texts are compared or looked up in a table and
/// never need a `String` of their own.
fn leaf<'a>(item: Item<'a>) -> Option<(&'a str, Cow<'a, str>)> {
    let Item::Val(v) = item else {
        return None;
    };
    // What `repetition(1)`, then `component(1)` down to a leaf, would give: the text before the first
    // separator of the value's level or a lower one, found in one pass (cutting at each level in turn
    // scanned the text up to three times, and building a splitter per step cost more still).
    let seps = v.separators();
    let raw = v.raw();
    let bytes = raw.as_bytes();
    let (r, c, s) = (seps.repetition, seps.component, seps.subcomponent);
    let end = match v.level() {
        Level::Field => bytes.iter().position(|&b| b == r || b == c || b == s),
        Level::Repetition => bytes.iter().position(|&b| b == c || b == s),
        Level::Component => bytes.iter().position(|&b| b == s),
        Level::Leaf => None,
    };
    // The separators are ASCII, so the cut falls on a character boundary.
    let raw = match end {
        Some(end) => raw.get(..end).unwrap_or(""),
        None => raw,
    };
    let v = Value::new(raw, seps, Level::Leaf);
    if raw.is_empty() || v.is_null() {
        return None;
    }
    // What `decoded` gives: the raw text itself unless it holds the escape character. `decoded` looks for it
    // with memchr, whose set-up costs more than a plain loop over the few bytes of a typical leaf (and
    // nearly every leaf has none); long texts still go to memchr.
    let escaped = match seps.escape {
        Some(e) if raw.len() < 32 => raw.bytes().any(|b| b == e),
        Some(_) => true,
        None => false,
    };
    let text = if escaped {
        v.decoded()
    } else {
        Cow::Borrowed(raw)
    };
    if text.is_empty() {
        return None;
    }
    Some((raw, text))
}

/// Where [`leaf`]'s text is, for a value at `loc`: each level down whose separator the value has is
/// named (as 1), the others are left out (`PID^1^5^1^1` for a name with components, `PID^1^8` for a
/// plain sex code).
fn leaf_loc(item: Item<'_>, mut loc: Loc) -> Loc {
    let Item::Val(v) = item else {
        return loc;
    };
    let seps = v.separators();
    let mut raw = v.raw();
    let steps: &[u8] = match v.level() {
        Level::Field => &[seps.repetition, seps.component, seps.subcomponent],
        Level::Repetition => &[seps.component, seps.subcomponent],
        Level::Component => &[seps.subcomponent],
        Level::Leaf => &[],
    };
    let first = 3 - steps.len();
    for (i, sep) in steps.iter().enumerate() {
        let Some(end) = raw.bytes().position(|b| b == *sep) else {
            continue;
        };
        raw = raw.get(..end).unwrap_or("");
        match first + i {
            0 => loc.rep = Some(ONE),
            1 => loc.comp = Some(ONE),
            _ => loc.sub = Some(ONE),
        }
    }
    loc
}

impl<'m, 'a> Hl7Doc<'m, 'a> {
    pub fn new(msg: &'m Message<'a>) -> Self {
        let segs: Vec<Segment<'m, 'a>> = msg.segments().collect();
        Hl7Doc {
            // A parsed segment's ID is always three bytes; 0 could match no path.
            ids: segs.iter().map(|s| id_code(s.id()).unwrap_or(0)).collect(),
            locs: segs
                .iter()
                .map(|s| Loc::segment(s.id(), s.occurrence(), s.position()))
                .collect(),
            segs,
            group: None,
            group_ids: Vec::new(),
            groups_for: Vec::new(),
            groups: Vec::new(),
            split: RefCell::new(Components::new()),
        }
    }

    // ---- groups ----------------------------------------------------------------------------------------

    /// `for_each` groups: a group starts at a listed segment unless the current group has not yet reached a
    /// later-listed one (`[ORC, OBR]`: ORC then OBR form one group; a second OBR or any ORC starts the next).
    fn group_ranges(&mut self, starts: &[Option<u32>]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut cur: Option<(usize, usize)> = None;
        for (i, id) in self.ids.iter().enumerate() {
            let Some(rank) = starts.iter().position(|s| *s == Some(*id)) else {
                continue;
            };
            match cur {
                Some((start, max)) if rank <= max => {
                    out.push((start, i));
                    cur = Some((i, rank));
                }
                Some((start, max)) => cur = Some((start, max.max(rank))),
                None => cur = Some((i, rank)),
            }
        }
        if let Some((start, _)) = cur {
            out.push((start, self.segs.len()));
        }
        self.group_ids.clear();
        if let Some((first, _)) = out.first() {
            for id in &self.ids[*first..] {
                if !self.group_ids.contains(id) {
                    self.group_ids.push(*id);
                }
            }
        }
        out
    }

    // ---- selection -------------------------------------------------------------------------------------

    /// The segment range an absolute path's segment resolves in.
    fn range_for(&self, id: &str) -> (usize, usize) {
        self.range_of(id_code(id))
    }

    /// [`Hl7Doc::range_for`] of an ID already made a number.
    #[inline]
    fn range_of(&self, id: Option<u32>) -> (usize, usize) {
        match (self.group, id) {
            (Some(g), Some(id)) if self.group_ids.contains(&id) => g,
            _ => (0, self.segs.len()),
        }
    }

    fn seg_loc(&self, idx: usize) -> Loc {
        self.locs[idx]
    }

    /// The segments an absolute path starts from, in message order: the first with its ID, the nth
    /// (`PID[2]`) or every one (`OBX[*]`), inside the current group when the ID belongs to it.
    fn segments_of<'p>(&'p self, path: &'p Path) -> impl Iterator<Item = usize> + 'p {
        let want = id_code(&path.segment);
        let (from, to) = self.range_of(want);
        let (skip, take) = match path.segment_index {
            Index::Default => (0, 1),
            Index::Nth(n) => (n.saturating_sub(1), usize::from(n > 0)),
            Index::All => (0, usize::MAX),
        };
        (from..to)
            .filter(move |&idx| want == Some(self.ids[idx]))
            .skip(skip)
            .take(take)
    }

    /// Every value a path selects (the first only, when `first_only`), with locations (or, with `T = ()`,
    /// without).
    fn select_hl7<T: Track>(
        &self,
        scope: Option<(Item<'a>, T)>,
        p: &PathRef,
        first_only: bool,
        out: &mut impl Sink<(Item<'a>, T)>,
    ) {
        match p {
            PathRef::Abs(path) => {
                for idx in self.segments_of(path) {
                    let loc = T::segment(self, idx);
                    self.descend(
                        Item::Seg(idx),
                        loc,
                        path.field,
                        path.repetition,
                        [path.component, path.subcomponent],
                        first_only,
                        out,
                    );
                    if first_only && out.full() {
                        return;
                    }
                }
            }
            PathRef::Json(_) => {}
            PathRef::Rel(path) => {
                let Some((item, loc)) = scope else { return };
                self.descend(
                    item,
                    loc,
                    path.field,
                    path.repetition,
                    [path.component, path.subcomponent],
                    first_only,
                    out,
                );
            }
        }
    }

    /// The first value a path selects: what [`Hl7Doc::select_hl7`] gives with `first_only`, found in a
    /// loop instead of through the recursive, sink-generic walk. Most lookups are of one value, and the
    /// walk's calls (each moving an item and its location) were the largest part of mapping a message.
    /// `first_agrees_with_select` pins the two together. With `T = ()` the walk keeps no location, for
    /// a value whose location nobody will ask for.
    fn first_hl7<T: Track>(
        &self,
        scope: Option<(Item<'a>, T)>,
        p: &PathRef,
    ) -> Option<(Item<'a>, T)> {
        match p {
            // The common case, the first segment with the ID, without the iterator of `segments_of`.
            PathRef::Abs(path) if path.segment_index == Index::Default => {
                let want = id_code(&path.segment)?;
                let (from, to) = self.range_of(Some(want));
                let idx = (from..to).find(|&i| self.ids[i] == want)?;
                self.first_in(Item::Seg(idx), T::segment(self, idx), path)
            }
            PathRef::Abs(path) => self
                .segments_of(path)
                .find_map(|idx| self.first_in(Item::Seg(idx), T::segment(self, idx), path)),
            PathRef::Rel(path) => {
                let (item, loc) = scope?;
                self.first_in(item, loc, path)
            }
            PathRef::Json(_) => None,
        }
    }

    /// [`Hl7Doc::first_hl7`] below one item (a segment or a value).
    fn first_in<T: Track>(&self, item: Item<'a>, loc: T, path: &Path) -> Option<(Item<'a>, T)> {
        let Some(n) = path.field else {
            return Some((item, loc));
        };
        let rest = [path.component, path.subcomponent];
        match item {
            Item::Seg(idx) => {
                let field = self.segs[idx].field(n)?;
                let floc = loc.field(n);
                let value = field.value();
                if rest[0].is_none() && path.repetition == Index::Default {
                    return Some((Item::Val(value), floc));
                }
                let steps = [rest[0], rest[1], None];
                match path.repetition {
                    Index::Default => self.first_down(value.repetition(1)?, floc.rep(1), steps),
                    Index::Nth(r) => self.first_down(value.repetition(r)?, floc.rep(r), steps),
                    Index::All => value
                        .repetitions()
                        .enumerate()
                        .find_map(|(i, rep)| self.first_down(rep, floc.rep(i + 1), steps)),
                }
            }
            Item::Val(v) => {
                let (v, loc) = match (v.level(), path.repetition) {
                    (Level::Field, Index::Nth(r)) => (v.repetition(r)?, loc.rep(r)),
                    _ => (v, loc),
                };
                self.first_down(v, loc, [Some(n), rest[0], rest[1]])
            }
        }
    }

    /// Components (then subcomponents) `steps` down from a value, up to the first `None`.
    fn first_down<T: Track>(
        &self,
        mut v: Value<'a>,
        mut loc: T,
        steps: [Option<usize>; 3],
    ) -> Option<(Item<'a>, T)> {
        for n in steps.into_iter().map_while(|s| s) {
            let next = match v.level() {
                Level::Leaf if n == 1 => v,
                Level::Leaf => return None,
                _ => self.split.borrow_mut().component(v, n)?,
            };
            loc = loc.down(v.level(), n);
            v = next;
        }
        Some((Item::Val(v), loc))
    }

    /// Goes down from an item: `step` (with `index` when it selects field repetitions), then `rest`.
    #[allow(clippy::too_many_arguments)]
    fn descend<T: Track, S: Sink<(Item<'a>, T)>>(
        &self,
        item: Item<'a>,
        loc: T,
        step: Option<usize>,
        index: Index,
        rest: [Option<usize>; 2],
        first_only: bool,
        out: &mut S,
    ) {
        let Some(n) = step else {
            out.put((item, loc));
            return;
        };
        match item {
            Item::Seg(idx) => {
                let Some(field) = self.segs[idx].field(n) else {
                    return;
                };
                let floc = loc.field(n);
                let value = field.value();
                if rest[0].is_none() && index == Index::Default {
                    out.put((Item::Val(value), floc));
                    return;
                }
                let emit = |r: usize, rep: Value<'a>, out: &mut S| {
                    self.descend(
                        Item::Val(rep),
                        floc.rep(r),
                        rest[0],
                        Index::Default,
                        [rest[1], None],
                        first_only,
                        out,
                    );
                };
                match index {
                    Index::Default => {
                        if let Some(rep) = value.repetition(1) {
                            emit(1, rep, out);
                        }
                    }
                    Index::Nth(r) => {
                        if let Some(rep) = value.repetition(r) {
                            emit(r, rep, out);
                        }
                    }
                    Index::All => {
                        for (i, rep) in value.repetitions().enumerate() {
                            emit(i + 1, rep, out);
                            if first_only && out.full() {
                                return;
                            }
                        }
                    }
                }
            }
            Item::Val(v) => {
                // A field-level value may be asked for a repetition first (`.[2]` is not in the syntax, but
                // a relative `.1[2]` from a field picks repetition 2's component 1).
                let (v, loc) = match (v.level(), index) {
                    (Level::Field, Index::Nth(r)) => match v.repetition(r) {
                        Some(rep) => (rep, loc.rep(r)),
                        None => return,
                    },
                    _ => (v, loc),
                };
                let next = match v.level() {
                    Level::Leaf if n == 1 => Some(v),
                    Level::Leaf => None,
                    _ => self.split.borrow_mut().component(v, n),
                };
                if let Some(c) = next {
                    let cloc = loc.down(v.level(), n);
                    self.descend(
                        Item::Val(c),
                        cloc,
                        rest[0],
                        Index::Default,
                        [rest[1], None],
                        first_only,
                        out,
                    );
                }
            }
        }
    }

    /// Where a path points even when nothing is there: for ERR-2 of a missing value.
    fn loc_of_hl7(&self, scope: Scope<'a>, p: &PathRef) -> Option<Loc> {
        let path = match p {
            PathRef::Abs(path) | PathRef::Rel(path) => path,
            PathRef::Json(_) => return None,
        };
        let (mut loc, level) = match p {
            PathRef::Abs(_) => {
                let (from, to) = self.range_for(&path.segment);
                let wanted = match path.segment_index {
                    Index::Nth(n) => n,
                    _ => 1,
                };
                let found = (from..to)
                    .filter(|&i| self.segs[i].id() == path.segment)
                    .nth(wanted - 1);
                let loc = match found {
                    Some(idx) => self.seg_loc(idx),
                    None => {
                        let before = self.segs[..from]
                            .iter()
                            .filter(|s| s.id() == path.segment)
                            .count();
                        Loc::segment(&path.segment, before + wanted, 0)
                    }
                };
                (loc, None)
            }
            PathRef::Json(_) => return None,
            PathRef::Rel(_) => {
                let (item, loc) = scope?;
                match item {
                    Item::Seg(_) => (loc, None),
                    Item::Val(v) => (loc, Some(v.level())),
                }
            }
        };
        let steps = [path.field, path.component, path.subcomponent];
        match level {
            None => {
                loc.field = path.field.map(nz).or(loc.field);
                loc.rep = match path.repetition {
                    Index::Nth(r) => Some(nz(r)),
                    _ => None,
                };
                loc.comp = path.component.map(nz);
                loc.sub = path.subcomponent.map(nz);
            }
            Some(mut level) => {
                for n in steps.into_iter().flatten() {
                    loc = loc.down(level, n);
                    level = match level {
                        Level::Field | Level::Repetition => Level::Component,
                        _ => Level::Leaf,
                    };
                }
            }
        }
        Some(loc)
    }
}

impl<'a> Doc<'a> for Hl7Doc<'_, 'a> {
    type Item = Item<'a>;
    type Loc = Loc;

    #[inline]
    fn select(
        &self,
        scope: Scope<'a>,
        p: &PathRef,
        first_only: bool,
        out: &mut impl Sink<(Item<'a>, Loc)>,
    ) {
        self.select_hl7(scope, p, first_only, out);
    }

    #[inline]
    fn first(&self, scope: Scope<'a>, p: &PathRef) -> Option<(Item<'a>, Loc)> {
        self.first_hl7(scope, p)
    }

    #[inline]
    fn first_item(&self, scope: Scope<'a>, p: &PathRef) -> Option<Item<'a>> {
        self.first_hl7(scope.map(|(item, _)| (item, ())), p)
            .map(|(item, ())| item)
    }

    #[inline]
    fn loc_of(&self, scope: Scope<'a>, p: &PathRef) -> Option<Loc> {
        self.loc_of_hl7(scope, p)
    }

    #[inline]
    fn leaf(&self, item: Item<'a>) -> Option<(Cow<'a, str>, Cow<'a, str>)> {
        leaf(item).map(|(raw, text)| (Cow::Borrowed(raw), text))
    }

    #[inline]
    fn leaf_loc(&self, item: Item<'a>, loc: Loc) -> Loc {
        leaf_loc(item, loc)
    }

    #[inline]
    fn present(&self, item: Item<'a>) -> bool {
        match item {
            Item::Seg(_) => true,
            _ => leaf(item).is_some(),
        }
    }

    #[inline]
    fn text(&self, item: Item<'a>) -> Option<Cow<'a, str>> {
        match item {
            Item::Seg(_) => Some(Cow::Borrowed("")),
            _ => leaf(item).map(|(_, t)| t),
        }
    }

    #[inline]
    fn blank(&self, item: Item<'a>) -> bool {
        match item {
            Item::Val(v) => is_blank(&v),
            Item::Seg(_) => false,
        }
    }

    #[inline]
    fn location(&self, loc: Loc) -> Option<Location> {
        Some(loc.location())
    }

    #[inline]
    fn path(&self, loc: Loc) -> String {
        loc.path()
    }

    #[inline]
    fn groups(&mut self, starts: &[String], out: &mut Vec<Option<(usize, usize)>>) -> bool {
        out.clear();
        if starts.is_empty() {
            self.group_ids.clear();
            self.groups_for.clear();
            out.push(None);
            return false;
        }
        // Compared as ID numbers: the files of one message mostly share the list.
        let other = self.groups_for.len() != starts.len()
            || self
                .groups_for
                .iter()
                .zip(starts)
                .any(|(code, s)| *code != id_code(s));
        if other {
            let codes: Vec<Option<u32>> = starts.iter().map(|s| id_code(s)).collect();
            self.groups = self.group_ranges(&codes);
            self.groups_for = codes;
        }
        out.extend(self.groups.iter().copied().map(Some));
        other
    }

    #[inline]
    fn enter(&mut self, group: Option<(usize, usize)>) {
        self.group = group;
    }
}

/// The message read without locations, for mapping a message that nothing will ask about: a location
/// is only for an error or an explanation, and working one out for every value and carrying it along
/// was work most messages never use. `MappingSet::map` maps with this first and, only when that fails,
/// maps again with [`Hl7Doc`] so that the error says where.
pub(crate) struct Unlocated<'m, 'a>(pub Hl7Doc<'m, 'a>);

impl<'a> Doc<'a> for Unlocated<'_, 'a> {
    type Item = Item<'a>;
    type Loc = ();

    #[inline]
    fn select(
        &self,
        scope: Option<(Item<'a>, ())>,
        p: &PathRef,
        first_only: bool,
        out: &mut impl Sink<(Item<'a>, ())>,
    ) {
        self.0.select_hl7(scope, p, first_only, out);
    }

    #[inline]
    fn first(&self, scope: Option<(Item<'a>, ())>, p: &PathRef) -> Option<(Item<'a>, ())> {
        self.0.first_hl7(scope, p)
    }

    #[inline]
    fn first_item(&self, scope: Option<(Item<'a>, ())>, p: &PathRef) -> Option<Item<'a>> {
        self.0.first_hl7(scope, p).map(|(item, ())| item)
    }

    fn loc_of(&self, _: Option<(Item<'a>, ())>, _: &PathRef) -> Option<()> {
        None
    }

    #[inline]
    fn leaf(&self, item: Item<'a>) -> Option<(Cow<'a, str>, Cow<'a, str>)> {
        self.0.leaf(item)
    }

    fn leaf_loc(&self, _: Item<'a>, (): ()) {}

    #[inline]
    fn present(&self, item: Item<'a>) -> bool {
        self.0.present(item)
    }

    #[inline]
    fn text(&self, item: Item<'a>) -> Option<Cow<'a, str>> {
        self.0.text(item)
    }

    #[inline]
    fn blank(&self, item: Item<'a>) -> bool {
        self.0.blank(item)
    }

    fn location(&self, (): ()) -> Option<Location> {
        None
    }

    fn path(&self, (): ()) -> String {
        String::new()
    }

    #[inline]
    fn groups(&mut self, starts: &[String], out: &mut Vec<Option<(usize, usize)>>) -> bool {
        self.0.groups(starts, out)
    }

    #[inline]
    fn enter(&mut self, group: Option<(usize, usize)>) {
        self.0.enter(group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::Separators;

    /// `first_hl7` must find exactly what the general walk finds first (also when it keeps no
    /// location): every fixture message, absolute paths at every depth and index, and relative paths
    /// from every value they select.
    #[test]
    fn first_agrees_with_select() {
        let key = |found: Option<(Item<'_>, Loc)>| {
            found.map(|(item, loc)| match item {
                Item::Seg(i) => (format!("seg {i}"), loc),
                Item::Val(v) => (format!("{:?} {:?}", v.raw(), v.level()), loc),
            })
        };
        // A stand-in location, for comparing what the walk without locations finds.
        let unplaced = Loc::segment("ZZZ", 0, 0);
        let indexes = ["", "[1]", "[2]", "[3]", "[*]"];
        let mut compared = 0;
        for (file, text) in super::super::tests::fixture_texts() {
            let Ok(msg) = Message::parse(&text) else {
                continue;
            };
            let doc = Hl7Doc::new(&msg);
            let ids: Vec<String> = msg.segments().map(|s| s.id().to_string()).collect();
            for id in &ids {
                for si in indexes {
                    for f in 0..=12 {
                        for fi in indexes {
                            for c in 0..=7 {
                                for s in 0..=3 {
                                    let mut text = format!("{id}{si}");
                                    if f > 0 {
                                        text.push_str(&format!(".{f}{fi}"));
                                        if c > 0 {
                                            text.push_str(&format!(".{c}"));
                                            if s > 0 {
                                                text.push_str(&format!(".{s}"));
                                            }
                                        }
                                    } else if !fi.is_empty() || c > 0 || s > 0 {
                                        continue;
                                    }
                                    let Ok(path) = text.parse::<Path>() else {
                                        continue;
                                    };
                                    let p = PathRef::Abs(path);
                                    let mut general = None;
                                    doc.select_hl7(None, &p, true, &mut general);
                                    assert_eq!(
                                        key(doc.first_hl7(None, &p)),
                                        key(general),
                                        "{} {text}",
                                        file.display()
                                    );
                                    // The walk without locations finds the same value.
                                    assert_eq!(
                                        key(doc.first_item(None, &p).map(|i| (i, unplaced))),
                                        key(general.map(|(i, _)| (i, unplaced))),
                                        "{} {text} (no location)",
                                        file.display()
                                    );
                                    compared += 1;
                                    // Relative paths from every value the absolute path selects.
                                    let mut all = Vec::new();
                                    doc.select_hl7(None, &p, false, &mut all);
                                    // Selecting without locations selects the same values.
                                    let items = |xs: &[(Item<'_>, Loc)]| -> Vec<_> {
                                        xs.iter().map(|&(i, _)| key(Some((i, unplaced)))).collect()
                                    };
                                    let mut bare: Vec<(Item<'_>, ())> = Vec::new();
                                    doc.select_hl7(None, &p, false, &mut bare);
                                    let bare: Vec<_> =
                                        bare.into_iter().map(|(i, ())| (i, unplaced)).collect();
                                    assert_eq!(items(&bare), items(&all), "{text} (no location)");
                                    for scope in all.into_iter().take(3) {
                                        for rel in [
                                            ".1", ".2", ".1.1", ".4.1", ".2.2", ".1[2]", ".3[2].1",
                                            ".3[*]", ".3[*].1", ".",
                                        ] {
                                            let Ok(rp) = format!("ZZZ{rel}")
                                                .parse::<Path>()
                                                .or_else(|_| "ZZZ".parse::<Path>())
                                            else {
                                                continue;
                                            };
                                            let rp = PathRef::Rel(if rel == "." {
                                                Path { field: None, ..rp }
                                            } else {
                                                rp
                                            });
                                            let mut general = None;
                                            doc.select_hl7(Some(scope), &rp, true, &mut general);
                                            let mut every = Vec::new();
                                            doc.select_hl7(Some(scope), &rp, false, &mut every);
                                            let mut bare: Vec<(Item<'_>, ())> = Vec::new();
                                            doc.select_hl7(
                                                Some((scope.0, ())),
                                                &rp,
                                                false,
                                                &mut bare,
                                            );
                                            let bare: Vec<_> = bare
                                                .into_iter()
                                                .map(|(i, ())| (i, unplaced))
                                                .collect();
                                            assert_eq!(
                                                items(&bare),
                                                items(&every),
                                                "{text} then {rel} (no location)"
                                            );
                                            assert_eq!(
                                                key(doc.first_hl7(Some(scope), &rp)),
                                                key(general),
                                                "{} {text} then {rel}",
                                                file.display()
                                            );
                                            assert_eq!(
                                                key(doc
                                                    .first_item(Some(scope), &rp)
                                                    .map(|i| (i, unplaced))),
                                                key(general.map(|(i, _)| (i, unplaced))),
                                                "{} {text} then {rel} (no location)",
                                                file.display()
                                            );
                                            compared += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(compared > 10_000, "{compared}");
    }

    /// The cached split must give exactly what `Value::component` gives: fields (first repetition only),
    /// repetitions, empty and trailing components, more components than the cache holds, and values split
    /// one after the other.
    #[test]
    fn components_agree_with_value_component() {
        let many = (1..=20)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("^");
        let texts = [
            "",
            "a",
            "a^b^c",
            "^^^x^",
            "a^b~c^d^e",
            "~x^y",
            "a&b^c&d",
            many.as_str(),
            "1^2^3^4^5^6^7^8^9^10^11^12^13^14^15^16",
            "1^2^3^4^5^6^7^8^9^10^11^12^13^14^15^16^17",
        ];
        let mut cache = Components::new();
        for level in [
            Level::Field,
            Level::Repetition,
            Level::Component,
            Level::Leaf,
        ] {
            for text in texts {
                let v = Value::new(text, Separators::default(), level);
                for n in 0..=22 {
                    let want = v.component(n).map(|c| (c.raw(), c.level()));
                    let got = cache.component(v, n).map(|c| (c.raw(), c.level()));
                    assert_eq!(got, want, "{level:?} {text:?} component {n}");
                }
            }
        }
    }
}
