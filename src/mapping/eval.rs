//! Evaluating checked rules over a source document: a parsed HL7 v2 message (`doc_hl7.rs`) or a FHIR
//! resource a client wrote (`doc_json.rs`).
//!
//! The rules (first, each, pick, join, const, use, fields; as, table, default, transform, required, when)
//! behave the same over both; only how a path selects values, what a value's text is, and how a location
//! is written differ, and that is the [`Doc`] trait. The evaluator is generic over it, so the HL7 path is
//! compiled for HL7 alone and costs what it cost before the FHIR side existed.

use std::borrow::Cow;

use crate::domain::{self, Draft, Key, StreamKind};
use crate::hl7::Location;

use super::ast::{Ast, Build, Condition, FieldRule, Inbound, Match, PathRef, Rule, Source, Test};
use super::transform::Out as TOut;
use super::{Explanation, MapError, MapErrorCode, MappedEvent};

/// Evaluation results: the error is boxed because it is rare and the `Ok` path runs for every rule.
type Res<T> = Result<T, Box<MapError>>;

/// Where selected values go: a list for `each`/`pick`, or one slot for the first match, so the most
/// common lookup (one path, one value) allocates nothing.
pub(crate) trait Sink<T> {
    fn put(&mut self, x: T);
    fn full(&self) -> bool;
}

impl<T> Sink<T> for Vec<T> {
    fn put(&mut self, x: T) {
        self.push(x);
    }
    fn full(&self) -> bool {
        !self.is_empty()
    }
}

impl<T> Sink<T> for Option<T> {
    fn put(&mut self, x: T) {
        if self.is_none() {
            *self = Some(x);
        }
    }
    fn full(&self) -> bool {
        self.is_some()
    }
}

/// A source document: how paths select values in it and how their locations read.
pub(crate) trait Doc<'a> {
    /// A selected value (cheap to copy).
    type Item: Copy;
    /// Where a value is, or would be.
    type Loc: Copy;

    /// Every value a path selects from the scope (the document when `None`), the first only when
    /// `first_only`.
    fn select(
        &self,
        scope: Option<(Self::Item, Self::Loc)>,
        p: &PathRef,
        first_only: bool,
        out: &mut impl Sink<(Self::Item, Self::Loc)>,
    );
    /// The first value a path selects: what `select` with `first_only` gives (sources override it with a
    /// faster walk).
    fn first(
        &self,
        scope: Option<(Self::Item, Self::Loc)>,
        p: &PathRef,
    ) -> Option<(Self::Item, Self::Loc)> {
        let mut out = None;
        self.select(scope, p, true, &mut out);
        out
    }
    /// The first value a path selects, without its location: for a value whose location nobody
    /// will ask for (sources may find it for less).
    fn first_item(
        &self,
        scope: Option<(Self::Item, Self::Loc)>,
        p: &PathRef,
    ) -> Option<Self::Item> {
        self.first(scope, p).map(|(item, _)| item)
    }
    /// Where a path points even when nothing is there: for the error about a missing value.
    fn loc_of(&self, scope: Option<(Self::Item, Self::Loc)>, p: &PathRef) -> Option<Self::Loc>;
    /// The text of a value as the source has it (raw) and as output (decoded); `None` when the value
    /// is empty.
    fn leaf(&self, item: Self::Item) -> Option<(Cow<'a, str>, Cow<'a, str>)>;
    /// The location of the exact part [`Doc::leaf`] reads of a value at `loc`: asked only for an
    /// error or an explanation, so that mapping a message works out no location it does not report.
    fn leaf_loc(&self, item: Self::Item, loc: Self::Loc) -> Self::Loc;
    /// For `present:`/`absent:`.
    fn present(&self, item: Self::Item) -> bool;
    /// The text `in:` and `where:` compare.
    fn text(&self, item: Self::Item) -> Option<Cow<'a, str>>;
    /// A value with nothing in it: a datatype or object built from it would be empty.
    fn blank(&self, item: Self::Item) -> bool;
    /// The HL7 location (ERR-2), where the source has one.
    fn location(&self, loc: Self::Loc) -> Option<Location>;
    /// The location in the syntax analysts read: `PID.3[2].1`, `Patient.identifier[1].value`.
    fn path(&self, loc: Self::Loc) -> String;
    /// The `for_each` groups (start, end) into `out` (emptied first); `[None]` for the whole document.
    /// `true` when they are groups of another list than the last call's: the same range may then
    /// resolve paths differently (which segment IDs belong to a group depends on the list).
    fn groups(&mut self, starts: &[String], out: &mut Vec<Option<(usize, usize)>>) -> bool;
    /// Makes absolute paths resolve inside a group (or the whole document with `None`).
    fn enter(&mut self, group: Option<(usize, usize)>);
}

type Scope<'a, D> = Option<(<D as Doc<'a>>::Item, <D as Doc<'a>>::Loc)>;

/// A group, a path tested in it, and the text read there (see [`Eval::file_holds`]).
type WhenText<'s, 'a> = (Option<(usize, usize)>, &'s PathRef, Option<Cow<'a, str>>);

/// What an `in:` test asks of the text read: that there is one, and that it is one of `values`.
fn one_of(text: Option<Cow<'_, str>>, values: &[String]) -> bool {
    text.is_some_and(|t| values.iter().any(|v| *v == t))
}

/// Where a value was read, as what is needed to work out its location (a location is worked out only
/// for an error or an explanation): the leaf of an item, or what a composite rule reads first.
enum At<'s, 'a, D: Doc<'a>> {
    Leaf(D::Item, D::Loc),
    Rule(&'s Rule, Scope<'a, D>),
}

impl<'s, 'a, D: Doc<'a>> Clone for At<'s, 'a, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<'s, 'a, D: Doc<'a>> Copy for At<'s, 'a, D> {}

/// What a rule produces: a payload part that borrows from the mapping files and the document (`'s: 'a`).
type Out<'a> = Option<Draft<'a>>;

/// One evaluation over one document.
pub(crate) struct Eval<'s, 'a, D: Doc<'a>> {
    ast: &'s Ast,
    tz: &'s jiff::tz::TimeZone,
    doc: D,
    mapping: &'s str,
    /// `Some` while explaining: the records so far.
    pub explain: Option<Vec<Explanation>>,
    event_index: usize,
    out: String,
    rules: Vec<&'s str>,
    /// Output field names down to the rule being evaluated, kept also when not explaining, so that an
    /// error can say which output field it was building (`patient.identifiers`).
    names: Vec<&'s str>,
    /// Put before `names` in errors: the outbound segment being built (`PID`, `NK1[2]`).
    name_prefix: String,
    /// Emptied lists for `each` and `pick` to select into, kept for the next one: a list per rule was a good
    /// part of the allocations of a message. A stack, because an `each` item's rules may hold an `each` too.
    selections: Vec<Vec<(D::Item, D::Loc)>>,
    /// The groups of the file being mapped, kept for the next file.
    groups: Vec<Option<(usize, usize)>>,
    /// The text a file's `when: {path, in}` read last, with its group and path: see [`Eval::file_holds`].
    /// Forgotten when the groups are those of another `for_each` list.
    when_text: Option<WhenText<'s, 'a>>,
    /// Set while an object is evaluated again in the file's order after an error (see [`Eval::fields`]),
    /// so that the objects inside it are too.
    file_order: bool,
    _doc: std::marker::PhantomData<&'a ()>,
}

impl<'s: 'a, 'a, D: Doc<'a>> Eval<'s, 'a, D> {
    pub fn new(ast: &'s Ast, tz: &'s jiff::tz::TimeZone, doc: D, explain: bool) -> Self {
        Eval {
            ast,
            tz,
            doc,
            mapping: "",
            explain: explain.then(Vec::new),
            event_index: 0,
            out: String::new(),
            rules: Vec::new(),
            // Grown only where the file's order is walked (see `Eval::fields`): explain and errors.
            names: Vec::new(),
            name_prefix: String::new(),
            // Deep enough for every shipped mapping, so that no message grows it.
            selections: Vec::with_capacity(4),
            groups: Vec::new(),
            when_text: None,
            file_order: false,
            _doc: std::marker::PhantomData,
        }
    }

    /// ` for patient.birth_date`: which output field an error happened in.
    fn for_field(&self) -> String {
        match (self.name_prefix.is_empty(), self.names.is_empty()) {
            (true, true) => String::new(),
            (true, false) => format!(" for {}", self.names.join(".")),
            (false, true) => format!(" for {}", self.name_prefix),
            (false, false) => format!(" for {}.{}", self.name_prefix, self.names.join(".")),
        }
    }

    fn err(&self, code: MapErrorCode, loc: Option<D::Loc>, message: String) -> Box<MapError> {
        Box::new(MapError {
            code,
            location: loc.and_then(|l| self.doc.location(l)),
            path: loc.map(|l| self.doc.path(l)).unwrap_or_default(),
            message,
            mapping: self.mapping.to_string(),
        })
    }

    // ---- locations ----------------------------------------------------------------------------------------

    /// The location a rule reads first, for an error about its value being missing.
    fn primary_loc(&self, rule: &Rule, scope: Scope<'a, D>) -> Option<D::Loc> {
        match &rule.source {
            Source::Path(p) | Source::Pick { path: p, .. } => self.doc.loc_of(scope, p),
            Source::Each { paths: ps, .. } => ps.first().and_then(|p| self.doc.loc_of(scope, p)),
            Source::First(rs) | Source::Join { parts: rs, .. } | Source::List(rs) => {
                rs.first().and_then(|r| self.primary_loc(r, scope))
            }
            Source::Use(id) => self.primary_loc(&self.ast.rules[*id].rule, None),
            // An object: where its `when` looks (`{path: PV1, present: true}` → the PV1 segment),
            // else where its first field reads.
            Source::Fields(fields) => match rule.when.first().and_then(|c| c.paths.first()) {
                Some(p) => self.doc.loc_of(scope, p),
                None => fields.iter().find_map(|f| self.primary_loc(&f.rule, scope)),
            },
            Source::Const(_) => None,
        }
    }

    /// The location of what a value was read from (see [`At`]).
    fn locate(&self, at: At<'s, 'a, D>) -> Option<D::Loc> {
        match at {
            At::Leaf(item, loc) => Some(self.doc.leaf_loc(item, loc)),
            At::Rule(rule, scope) => self.primary_loc(rule, scope),
        }
    }

    /// The source location of an output field (`["patient", "identifiers"]`), following `use` and `fields`.
    pub fn field_source(&self, fields: &[FieldRule], names: &[&str]) -> Option<D::Loc> {
        let (first, rest) = names.split_first()?;
        let mut rule = &fields.iter().find(|f| f.name == *first)?.rule;
        for name in rest {
            while let Source::Use(id) = &rule.source {
                rule = &self.ast.rules[*id].rule;
            }
            let fs = match (&rule.source, &rule.build) {
                (Source::Fields(fs), _) | (_, Some(Build::Fields(fs))) => fs,
                _ => return self.primary_loc(rule, None),
            };
            rule = &fs.iter().find(|f| f.name == *name)?.rule;
        }
        self.primary_loc(rule, None)
    }

    fn first(&self, scope: Scope<'a, D>, p: &PathRef) -> Option<(D::Item, D::Loc)> {
        self.doc.first(scope, p)
    }

    fn text_at(&self, scope: Scope<'a, D>, p: &PathRef) -> Option<Cow<'a, str>> {
        let item = self.doc.first_item(scope, p)?;
        self.doc.text(item)
    }

    /// Whether every `where` entry holds for an item.
    fn matches(&self, item: D::Item, loc: D::Loc, conditions: &[Match]) -> bool {
        conditions.iter().all(|(rp, values)| {
            self.text_at(Some((item, loc)), rp)
                .is_some_and(|t| values.iter().any(|v| *v == t))
        })
    }

    fn holds(&self, c: &Condition, scope: Scope<'a, D>) -> bool {
        let present = |p: &PathRef| {
            self.doc
                .first_item(scope, p)
                .is_some_and(|item| self.doc.present(item))
        };
        let is_in = |p: &PathRef, values: &[String]| one_of(self.text_at(scope, p), values);
        match &c.test {
            Test::Present => c.paths.iter().any(present),
            Test::Absent => !c.paths.iter().any(present),
            Test::In(values) => c.paths.iter().any(|p| is_in(p, values)),
            Test::NotIn(values) => !c.paths.iter().any(|p| is_in(p, values)),
        }
    }

    /// A file's `when:` in one group. The files of one message type mostly test the same path (the five
    /// order files each look for their codes in ORC-1), so the text an `in`/`not_in` test reads is kept
    /// for the next file's test of the same path in the same group: reading it again for each file was
    /// most of what a file that does not apply cost.
    fn file_holds(&mut self, c: &'s Condition, group: Option<(usize, usize)>) -> bool {
        let (values, negated, p) = match (&c.test, c.paths.as_slice()) {
            (Test::In(values), [p]) => (values, false, p),
            (Test::NotIn(values), [p]) => (values, true, p),
            _ => return self.holds(c, None),
        };
        let text = match &self.when_text {
            Some((g, q, text)) if *g == group && *q == p => text.clone(),
            _ => {
                let text = self.text_at(None, p);
                self.when_text = Some((group, p, text.clone()));
                text
            }
        };
        one_of(text, values) != negated
    }

    // ---- rules ------------------------------------------------------------------------------------------

    fn record(&mut self, source: Option<D::Loc>, raw: Option<&str>, value: &Draft<'_>) {
        if let Some(ex) = &mut self.explain {
            ex.push(Explanation {
                event: self.event_index,
                output: self.out.clone(),
                rule: self.rules.join(" → "),
                source: source.map(|l| self.doc.path(l)),
                raw: raw.map(str::to_string),
                value: value.to_value(),
            });
        }
    }

    fn push_out(&mut self, part: &str) -> usize {
        let len = self.out.len();
        if self.explain.is_some() {
            if !self.out.is_empty() && !part.starts_with('[') {
                self.out.push('.');
            }
            self.out.push_str(part);
        }
        len
    }

    /// The object of `fields:`; absent when no field has a value.
    ///
    /// Outside explain the fields are evaluated in rank order ([`FieldRule::by_rank`]), so the members
    /// come out in name order and are not sorted (sorting them was about 2 % of mapping an order). The
    /// file's order still decides which error is reported and the order of explanations: explain walks
    /// the file's order, and after an error the object is evaluated again in the file's order. Evaluating
    /// has no side effects, so the same fields fail, and the error reported is that of the first in the file.
    fn fields(&mut self, fields: &'s [FieldRule], scope: Scope<'a, D>) -> Res<Out<'a>> {
        let ranked = self.explain.is_none()
            && !self.file_order
            && fields.first().is_some_and(|f| f.by_rank != u32::MAX);
        if !ranked {
            return self.fields_in_file_order(fields, scope);
        }
        let mut members = Vec::new();
        for f in fields {
            let Some(f) = fields.get(f.by_rank as usize) else {
                return self.fields_in_file_order(fields, scope);
            };
            let v = match self.plain_path(&f.rule) {
                Some(p) => self.plain_text(p, scope),
                None => match self.eval(&f.rule, scope) {
                    Ok(v) => v,
                    Err(_) => {
                        self.file_order = true;
                        let r = self.fields_in_file_order(fields, scope);
                        self.file_order = false;
                        return r;
                    }
                },
            };
            if let Some(v) = v {
                if members.capacity() == 0 {
                    // Allocated directly (`reserve` on an empty vector goes through its growth path).
                    members = Vec::with_capacity(fields.len());
                }
                members.push((Self::key(f), v));
            }
        }
        Ok((!members.is_empty()).then_some(Draft::Object(members)))
    }

    fn key(f: &'s FieldRule) -> Key<'s> {
        Key {
            name: &f.name,
            json: Some(&f.json_key),
            rank: f.rank,
        }
    }

    /// [`Eval::fields`] in the file's order, the members then sorted.
    fn fields_in_file_order(
        &mut self,
        fields: &'s [FieldRule],
        scope: Scope<'a, D>,
    ) -> Res<Out<'a>> {
        let mut members = Vec::new();
        for f in fields {
            // A plain rule cannot fail, so it needs no name for an error (nor a record, outside explain).
            let v = match self.plain_path(&f.rule) {
                Some(p) => Ok(self.plain_text(p, scope)),
                None => {
                    let len = self.push_out(&f.name);
                    self.names.push(&f.name);
                    let v = self.eval(&f.rule, scope);
                    self.names.pop();
                    self.out.truncate(len);
                    v
                }
            };
            if let Some(v) = v? {
                if members.capacity() == 0 {
                    members = Vec::with_capacity(fields.len());
                }
                members.push((Self::key(f), v));
            }
        }
        Ok((!members.is_empty()).then(|| Draft::object_ranked(members)))
    }

    /// The path of a [plain](Rule::plain) path rule, outside explain (which records every value).
    #[inline]
    fn plain_path(&self, rule: &'s Rule) -> Option<&'s PathRef> {
        match &rule.source {
            Source::Path(p) if rule.plain && self.explain.is_none() => Some(p),
            _ => None,
        }
    }

    /// What a [plain](Rule::plain) path rule gives: the text of the path's first value.
    #[inline]
    fn plain_text(&self, p: &PathRef, scope: Scope<'a, D>) -> Out<'a> {
        self.doc
            .first_item(scope, p)
            .and_then(|item| self.doc.leaf(item))
            .map(|(_, text)| Draft::Text(text))
    }

    fn eval(&mut self, rule: &'s Rule, scope: Scope<'a, D>) -> Res<Out<'a>> {
        // Most rules only take a path's text (`family: .1.1`): nothing to record, check or change.
        if let Some(p) = self.plain_path(rule) {
            return Ok(self.plain_text(p, scope));
        }
        if !rule.when.iter().all(|c| self.holds(c, scope)) {
            return Ok(None);
        }
        let track = self.explain.is_some() && !matches!(rule.source, Source::Fields(_));
        if track {
            self.rules.push(&rule.desc);
        }
        let r = self.eval_source(rule, scope);
        if track {
            self.rules.pop();
        }
        r
    }

    fn eval_source(&mut self, rule: &'s Rule, scope: Scope<'a, D>) -> Res<Out<'a>> {
        let mut value = match &rule.source {
            Source::Path(p) => match self.first(scope, p) {
                Some((item, loc)) => self.item(rule, item, loc)?,
                None => None,
            },
            Source::Pick { path, conditions } => {
                let mut all = self.selections.pop().unwrap_or_default();
                self.doc.select(scope, path, false, &mut all);
                let found = all
                    .drain(..)
                    .find(|(item, loc)| self.matches(*item, *loc, conditions));
                all.clear();
                self.selections.push(all);
                match found {
                    Some((item, loc)) => self.item(rule, item, loc)?,
                    None => None,
                }
            }
            Source::Each {
                paths,
                filter,
                prefer,
            } => {
                let mut all = self.selections.pop().unwrap_or_default();
                for p in paths {
                    self.doc.select(scope, p, false, &mut all);
                }
                if !filter.is_empty() {
                    all.retain(|(item, loc)| self.matches(*item, *loc, filter));
                }
                if !prefer.is_empty() {
                    // A stable sort: preferred items first, the rest in message order.
                    all.sort_by_key(|(item, loc)| !self.matches(*item, *loc, prefer));
                }
                let mut list = Vec::with_capacity(all.len());
                if rule.plain && self.explain.is_none() {
                    // Each item's text as it is (see `Rule::plain`).
                    list.extend(
                        all.iter()
                            .filter_map(|&(item, _)| self.doc.leaf(item))
                            .map(|(_, text)| Draft::Text(text)),
                    );
                } else {
                    for &(item, loc) in &all {
                        let len = if self.explain.is_some() {
                            self.push_out(&format!("[{}]", list.len()))
                        } else {
                            self.out.len()
                        };
                        let v = self.item(rule, item, loc);
                        self.out.truncate(len);
                        if let Some(v) = v? {
                            list.push(v);
                        }
                    }
                }
                all.clear();
                self.selections.push(all);
                (!list.is_empty()).then_some(Draft::List(list))
            }
            Source::First(rules) => {
                let mut found = None;
                for r in rules {
                    if let Some(v) = self.eval(r, scope)? {
                        found = Some(v);
                        break;
                    }
                }
                self.post_composite(rule, found, scope)?
            }
            Source::Join { parts, separator } => {
                let mark = self.explain.as_ref().map_or(0, Vec::len);
                let mut joined: Option<String> = None;
                for p in parts {
                    if let Some(Draft::Text(s)) = self.eval(p, scope)? {
                        match &mut joined {
                            Some(j) => {
                                j.push_str(separator);
                                j.push_str(&s);
                            }
                            None => joined = Some(s.into_owned()),
                        }
                    }
                }
                let joined = joined.map(|j| Draft::Text(Cow::Owned(j)));
                if let Some(ex) = &mut self.explain {
                    // One record for the joined value instead of one per part.
                    let parts: Vec<Explanation> = ex.drain(mark..).collect();
                    if let Some(v) = &joined {
                        let join = |f: &dyn Fn(&Explanation) -> Option<String>| {
                            let xs: Vec<String> = parts.iter().filter_map(f).collect();
                            (!xs.is_empty()).then(|| xs.join(" + "))
                        };
                        ex.push(Explanation {
                            event: self.event_index,
                            output: self.out.clone(),
                            rule: self.rules.join(" → "),
                            source: join(&|e| e.source.clone()),
                            raw: join(&|e| e.raw.clone()),
                            value: v.to_value(),
                        });
                    }
                }
                self.post_composite(rule, joined, scope)?
            }
            Source::Const(v) => {
                let v = Draft::from_value(v);
                self.record(None, None, &v);
                Some(v)
            }
            Source::Use(id) => self.eval(&self.ast.rules[*id].rule, None)?,
            Source::Fields(fields) => self.fields(fields, scope)?,
            Source::List(rules) => {
                let mut list = Vec::with_capacity(rules.len());
                for r in rules {
                    let len = if self.explain.is_some() {
                        self.push_out(&format!("[{}]", list.len()))
                    } else {
                        self.out.len()
                    };
                    let v = self.eval(r, scope);
                    self.out.truncate(len);
                    if let Some(v) = v? {
                        list.push(v);
                    }
                }
                (!list.is_empty()).then_some(Draft::List(list))
            }
        };
        if value.is_none()
            && let Some(d) = &rule.default
        {
            let d = Draft::from_value(d);
            if self.explain.is_some() {
                let loc = self.primary_loc(rule, scope);
                self.record(loc, None, &d);
            }
            value = Some(d);
        }
        if value.is_none() && rule.required {
            let loc = self.primary_loc(rule, scope);
            let at = loc
                .map(|l| format!(" at {}", self.doc.path(l)))
                .unwrap_or_default();
            let field = self.for_field();
            return Err(self.err(
                MapErrorCode::RequiredMissing,
                loc,
                format!(
                    "a required value is missing{at}{field} (rule: {})",
                    rule.desc
                ),
            ));
        }
        Ok(value)
    }

    /// Modifiers on `first`/`join`: apply transforms and table to the chosen text, updating its record.
    fn post_composite(
        &mut self,
        rule: &'s Rule,
        value: Out<'a>,
        scope: Scope<'a, D>,
    ) -> Res<Out<'a>> {
        if rule.transforms.is_empty() && rule.table.is_none() {
            return Ok(value);
        }
        let Some(Draft::Text(text)) = value else {
            return Ok(value);
        };
        let (source, raw) = match self.explain.as_mut().and_then(Vec::pop) {
            Some(e) => (e.source, e.raw),
            None => (None, None),
        };
        let out = self.post(
            rule,
            text,
            raw.as_deref().unwrap_or(""),
            At::Rule(rule, scope),
        )?;
        if let (Some(ex), Some(v)) = (&mut self.explain, &out)
            && let Some(last) = ex.last_mut()
        {
            last.source = source.or(last.source.take());
            last.value = v.to_value();
        }
        Ok(out)
    }

    /// What a scope source makes of one selected item: a datatype, an object, or text.
    fn item(&mut self, rule: &'s Rule, item: D::Item, loc: D::Loc) -> Res<Out<'a>> {
        match &rule.build {
            Some(build) => {
                if self.doc.blank(item) {
                    return Ok(None);
                }
                match build {
                    Build::As(id) => self.eval(&self.ast.datatypes[*id].rule, Some((item, loc))),
                    Build::Fields(fields) => self.fields(fields, Some((item, loc))),
                }
            }
            None => match self.doc.leaf(item) {
                Some((raw, text)) => {
                    let v = self.post(rule, text, &raw, At::Leaf(item, loc))?;
                    if let Some(v) = &v
                        && self.explain.is_some()
                    {
                        let lloc = self.doc.leaf_loc(item, loc);
                        self.record(Some(lloc), Some(&raw), v);
                    }
                    Ok(v)
                }
                None => Ok(None),
            },
        }
    }

    /// Transforms, then the table. Records nothing; callers do.
    fn post(
        &mut self,
        rule: &'s Rule,
        text: Cow<'a, str>,
        raw: &str,
        at: At<'s, 'a, D>,
    ) -> Res<Out<'a>> {
        // The text stays borrowed unless a transform rewrites it or it becomes the output itself.
        let text = if rule.transforms.is_empty() {
            text
        } else {
            let mut out = TOut::Str(text);
            for t in &rule.transforms {
                out = t.apply(out, self.tz).map_err(|m| {
                    let loc = self.locate(at);
                    let at = loc
                        .map(|l| format!(" at {}", self.doc.path(l)))
                        .unwrap_or_default();
                    self.err(
                        MapErrorCode::DataType,
                        loc,
                        format!("{m}{at}{}", self.for_field()),
                    )
                })?;
            }
            match out {
                TOut::Bool(b) => return Ok(Some(Draft::Bool(b))),
                TOut::Str(s) => s,
            }
        };
        if text.is_empty() {
            return Ok(None);
        }
        let Some(tid) = rule.table else {
            return Ok(Some(Draft::Text(text)));
        };
        let table = &self.ast.tables[tid];
        if rule.reverse {
            // Value → code. The table's own `default` is a value for unknown codes, not a code, so only
            // the rule's default applies here.
            if let Some(code) = table.reverse.get(text.as_ref()) {
                return Ok(Some(Draft::Text(Cow::Borrowed(code))));
            }
            if let Some(d) = &rule.default {
                return Ok(Some(Draft::from_value(d)));
            }
            let loc = self.locate(at);
            let at = loc
                .map(|l| format!(" at {}", self.doc.path(l)))
                .unwrap_or_default();
            return Err(self.err(
                MapErrorCode::TableValue,
                loc,
                format!(
                    "{text:?}{at}{} has no code in table {} (tables/{}.yaml, read in reverse), and the rule has no default",
                    self.for_field(),
                    table.name,
                    table.name
                ),
            ));
        }
        if let Some(v) = table.map.get(text.as_ref()) {
            return Ok(Some(Draft::Text(Cow::Borrowed(v))));
        }
        if let Some(d) = &table.default {
            return Ok(Some(Draft::Text(Cow::Borrowed(d))));
        }
        if let Some(d) = &rule.default {
            return Ok(Some(Draft::from_value(d)));
        }
        let loc = self.locate(at);
        let at = loc
            .map(|l| format!(" at {}", self.doc.path(l)))
            .unwrap_or_default();
        let _ = raw;
        Err(self.err(
            MapErrorCode::TableValue,
            loc,
            format!(
                "{text:?}{at}{} is not in table {} (tables/{}.yaml), and the rule has no default",
                self.for_field(),
                table.name,
                table.name
            ),
        ))
    }

    // ---- outbound -------------------------------------------------------------------------------------------

    /// Names the mapping in errors (inbound files set it per file in [`Eval::events`]).
    pub fn set_mapping(&mut self, name: &'s str) {
        self.mapping = name;
    }

    /// Whether all conditions hold in a scope (a segment's `when:`).
    pub fn all_hold(&self, conditions: &[Condition], scope: Scope<'a, D>) -> bool {
        conditions.iter().all(|c| self.holds(c, scope))
    }

    /// Every item a path selects (a segment's `each:`).
    pub fn select_all(&self, p: &PathRef) -> Vec<(D::Item, D::Loc)> {
        let mut out = Vec::new();
        self.doc.select(None, p, false, &mut out);
        out
    }

    /// The object of `fields:` as an outbound segment or document: `prefix` starts the output names of
    /// explanations (`PID`, `NK1[2]`; empty for a JSON document) and of errors.
    pub fn object_at(
        &mut self,
        prefix: &str,
        fields: &'s [FieldRule],
        scope: Scope<'a, D>,
    ) -> Res<Out<'a>> {
        self.out.clear();
        if self.explain.is_some() {
            self.out.push_str(prefix);
        }
        self.name_prefix.clear();
        self.name_prefix.push_str(prefix);
        let r = self.fields(fields, scope);
        self.name_prefix.clear();
        r
    }

    // ---- whole events -------------------------------------------------------------------------------------

    /// The events of one inbound file, appended to `out`: one per group with `for_each`, else at most one.
    /// Each comes with the index of the segment its group starts at, for ordering across files.
    pub fn events(&mut self, m: &'s Inbound, out: &mut Vec<(usize, MappedEvent)>) -> Res<()> {
        self.mapping = &m.name;
        // The list is kept for the next file (a message is tried against several).
        let mut groups = std::mem::take(&mut self.groups);
        if self.doc.groups(&m.for_each, &mut groups) {
            self.when_text = None;
        }
        for &g in &groups {
            self.doc.enter(g);
            if !m.when.iter().all(|c| self.file_holds(c, g)) {
                continue;
            }
            self.out.clear();
            let draft = self
                .fields(&m.fields, None)?
                .unwrap_or_else(|| Draft::Object(Vec::new()));
            let spec = m
                .spec
                .ok_or_else(|| domain::DomainError::UnknownEvent(m.event.clone()));
            let normalized = spec.and_then(|spec| domain::normalize_draft(spec, draft));
            let (payload, keys) = normalized.map_err(|e| {
                self.err(
                    MapErrorCode::DataType,
                    None,
                    format!(
                        "the {} payload this mapping built is not valid: {e}",
                        m.event
                    ),
                )
            })?;
            let mut chosen = m
                .stream
                .iter()
                .find_map(|kind| Some((*kind, keys.get(*kind)?.clone())));
            // A FHIR write without a key (a Patient without an identifier) is still a resource:
            // the API gives it a stream of its own, which an empty key value asks for.
            if chosen.is_none()
                && m.fhir.is_some()
                && let Some(kind) = m.stream.first()
            {
                chosen = Some((*kind, (None, String::new())));
            }
            let Some((stream, stream_key)) = chosen else {
                let kind = m.stream.first().copied().unwrap_or(StreamKind::Patient);
                let names: &[&str] = match kind {
                    StreamKind::Patient => &["patient", "identifiers"],
                    StreamKind::Encounter => &["encounter", "visit_number"],
                    StreamKind::Order => &["order", "placer_order_number"],
                };
                let loc = self.field_source(&m.fields, names);
                let at = loc
                    .map(|l| format!(" ({})", self.doc.path(l)))
                    .unwrap_or_default();
                return Err(self.err(
                    MapErrorCode::RequiredMissing,
                    loc,
                    format!(
                        "no key for the {} stream: {} is empty{at}",
                        names[0],
                        names.join(".")
                    ),
                ));
            };
            out.push((
                g.map_or(0, |g| g.0),
                MappedEvent {
                    event_type: m.event.clone(),
                    schema_version: m.schema_version,
                    stream,
                    stream_key,
                    keys,
                    payload,
                    mapping: m.name.clone(),
                },
            ));
            self.event_index += 1;
        }
        self.doc.enter(None);
        self.groups = groups;
        Ok(())
    }
}
